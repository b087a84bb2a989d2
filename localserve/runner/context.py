"""The forward context: what a model's attention layers read during one forward pass.

The runner packs a step's tokens, builds an `AttentionMetadata`, and runs the model inside
`forward_context(ForwardContext(meta, kv_caches, ops))`. Layer i's attention then finds its
KV cache at `ctx.kv_caches[i]` and calls the backend's `ops` to write K/V and attend, so the
model files never depend on a backend. Layouts are those of `localserve.kernels.reference`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class AttentionMetadata:
    """Where the packed tokens of one step sit in their sequences and in the KV pool."""

    slot_mapping: torch.Tensor  # [num_tokens] int64, KV slot of each new token (<0 = skip)
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int32
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32, packed query slices
    seq_lens: torch.Tensor  # [num_seqs] int32, full length (cached + new) per sequence
    max_query_len: int
    max_seq_len: int


@runtime_checkable
class AttentionOps(Protocol):
    """A backend's attention kernels (one object per runner, shared by every layer)."""

    def write_kv(self, key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                 v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        """Stores key/value [num_tokens, num_kv_heads, head_dim] at their slots, in place."""

    def attend(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
               meta: AttentionMetadata, scale: float, sliding_window: int | None,
               soft_cap: float | None) -> torch.Tensor:
        """Causal paged attention of q [num_tokens, num_heads, head_dim]; same shape out."""

    # Per-head q/k norm + rotary + KV write in one kernel (kernels.reference.rope_and_cache's
    # signature), or None: the layers then run norm, rotary and write_kv one by one.
    rope_and_cache: Callable[..., torch.Tensor] | None


@dataclass
class ForwardContext:
    meta: AttentionMetadata
    # Per layer (k_cache, v_cache), each [num_blocks, block_size, num_kv_heads, head_dim].
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]]
    ops: AttentionOps


_CURRENT: ContextVar[ForwardContext | None] = ContextVar("localserve_forward_context",
                                                         default=None)


@contextmanager
def forward_context(ctx: ForwardContext) -> Iterator[ForwardContext]:
    """Makes `ctx` the current forward context for the duration of the `with` block."""
    token = _CURRENT.set(ctx)
    try:
        yield ctx
    finally:
        _CURRENT.reset(token)


def get_forward_context() -> ForwardContext:
    """The context set by the innermost `forward_context`; raises outside of one."""
    ctx = _CURRENT.get()
    if ctx is None:
        raise RuntimeError("no forward context is set: run the model inside "
                           "`with forward_context(ForwardContext(meta, kv_caches, ops)):`")
    return ctx


class KernelAttentionOps:
    """AttentionOps over a kernel module whose `write_kv` and `paged_attention` follow
    `localserve.kernels.reference` (the reference, C and Triton kernels all do).

    `host_bounds`: also pass the step's max query/sequence lengths, which lets a GPU kernel
    pick its launch shape without a device sync.
    """

    def __init__(self, kernels: Any, host_bounds: bool = False) -> None:
        self._kernels = kernels
        self._host_bounds = host_bounds
        self.rope_and_cache = getattr(kernels, "rope_and_cache", None)  # None: not fused

    def write_kv(self, key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                 v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        self._kernels.write_kv(key, value, k_cache, v_cache, slot_mapping)

    def attend(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
               meta: AttentionMetadata, scale: float, sliding_window: int | None,
               soft_cap: float | None) -> torch.Tensor:
        bounds = ({"max_query_len": meta.max_query_len, "max_seq_len": meta.max_seq_len}
                  if self._host_bounds else {})
        return self._kernels.paged_attention(q, k_cache, v_cache, meta.block_tables,
                                             meta.query_start_loc, meta.seq_lens, scale,
                                             sliding_window, soft_cap, **bounds)


class ReferenceAttentionOps(KernelAttentionOps):
    """Plain-torch attention from `localserve.kernels.reference` (fp32 math, any device)."""

    def __init__(self) -> None:
        from localserve.kernels import reference

        super().__init__(reference)
