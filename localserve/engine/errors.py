"""Errors the engine raises to its callers; the server maps each to an HTTP status."""

from __future__ import annotations


class PromptTooLongError(ValueError):
    """The prompt (plus what it must generate) does not fit max_model_len or the KV pool."""

    code = "context_length_exceeded"


class QueueFullError(RuntimeError):
    """The waiting queue is at its bound; the caller should retry later."""

    retry_after_s = 1


class EngineDeadError(RuntimeError):
    """The engine thread died; the process should exit so a supervisor restarts it."""
