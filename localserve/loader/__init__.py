"""Weight loading: GGUF files, HF safetensors folders, and random (dummy) weights."""

from __future__ import annotations

from localserve.loader.model_loader import LoadedModel, load_model, read_arch, resolve_dtype

__all__ = ["LoadedModel", "load_model", "read_arch", "resolve_dtype"]
