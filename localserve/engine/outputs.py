"""What the engine hands back to callers: per-request output deltas and live stats snapshots."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from localserve.interfaces import TokenSample

FinishReason = Literal["stop", "length", "abort"]


@dataclass(slots=True)  # one per choice per step: see interfaces.ScheduledSeq
class CompletionDelta:
    """One choice's progress since the previous output of its request."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    # One entry per new token when the request asked for logprobs, else empty.
    logprobs: list[TokenSample] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    # The stop string or stop token id that ended the choice (None for EOS or length).
    stop_reason: str | int | None = None


@dataclass
class RequestMetrics:
    """Wall-clock times (time.monotonic()) and counts of one request."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None
    num_prompt_tokens: int = 0
    num_generation_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache


@dataclass
class RequestOutput:
    """A delta: the choices that changed since the last output; `finished` once all are done."""

    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionDelta]
    finished: bool
    metrics: RequestMetrics


@dataclass(frozen=True)
class RequestStats:
    id: str
    state: Literal["waiting", "running", "preempted"]
    prompt_tokens: int
    generated_tokens: int
    priority: int
    age_s: float


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine's live state (the JSON stats endpoint and the TUI read it)."""

    model: str
    backend: str
    device: str
    quantization: str | None
    max_model_len: int
    block_size: int
    num_running: int
    num_waiting: int
    num_preempted_total: int
    kv_blocks_total: int
    kv_blocks_used: int
    prefix_cache_queries: int  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int  # of those, tokens found
    prompt_tokens_total: int
    generation_tokens_total: int
    uptime_s: float
    requests: list[RequestStats] = field(default_factory=list)

    @property
    def kv_blocks_free(self) -> int:
        return self.kv_blocks_total - self.kv_blocks_used

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kv_blocks_free"] = self.kv_blocks_free
        d["kv_usage"] = self.kv_blocks_used / max(1, self.kv_blocks_total)
        return d
