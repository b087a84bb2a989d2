"""Paged attention of one layer: writes this step's K/V to the layer's cache, then attends.

Everything backend-specific comes from the forward context: the layer's KV cache
(`ctx.kv_caches[layer_idx]`), the step's metadata and the kernels (`ctx.ops`).
`forward_rope` also runs the q/k norm and rotary that precede attention, fused with the KV
write where the backend's ops offer `rope_and_cache`.
"""

from __future__ import annotations

import torch
from torch import nn

from localserve.layers.norm import RMSNorm
from localserve.layers.rotary import RotaryEmbedding
from localserve.runner.context import get_forward_context


class Attention(nn.Module):
    def __init__(self, layer_idx: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 scale: float, sliding_window: int | None = None,
                 soft_cap: float | None = None) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale
        self.sliding_window = sliding_window
        self.soft_cap = soft_cap

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [T, num_heads, head_dim], k/v [T, num_kv_heads, head_dim] -> [T, num_heads, hd]."""
        ctx = get_forward_context()
        k_cache, v_cache = ctx.kv_caches[self.layer_idx]
        ctx.ops.write_kv(k, v, k_cache, v_cache, ctx.meta.slot_mapping)
        return ctx.ops.attend(q, k_cache, v_cache, ctx.meta, self.scale, self.sliding_window,
                              self.soft_cap)

    def forward_rope(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                     v: torch.Tensor, rotary: RotaryEmbedding, q_norm: RMSNorm | None = None,
                     k_norm: RMSNorm | None = None) -> torch.Tensor:
        """Per-head q/k norm (optional), rotary, KV write and attention; the first three as
        one kernel where the backend's ops have `rope_and_cache` (one eps for both norms)."""
        ctx = get_forward_context()
        fused = ctx.ops.rope_and_cache
        norms = q_norm is not None and k_norm is not None
        if fused is None or (norms and (q_norm.eps, q_norm.offset)
                             != (k_norm.eps, k_norm.offset)):
            if norms:
                q, k = q_norm(q), k_norm(k)
            q, k = rotary(positions, q, k)
            return self.forward(q, k, v)
        k_cache, v_cache = ctx.kv_caches[self.layer_idx]
        norm_args = ({"q_norm": q_norm.weight, "k_norm": k_norm.weight, "eps": q_norm.eps,
                      "norm_offset": q_norm.offset} if norms else {})
        q = fused(positions, q, k, v, rotary.cos_sin(q.device), k_cache, v_cache,
                  ctx.meta.slot_mapping, **norm_args)
        return ctx.ops.attend(q, k_cache, v_cache, ctx.meta, self.scale, self.sliding_window,
                              self.soft_cap)

    def extra_repr(self) -> str:
        return (f"layer={self.layer_idx}, heads={self.num_heads}/{self.num_kv_heads}, "
                f"head_dim={self.head_dim}, scale={self.scale:.4g}, "
                f"window={self.sliding_window}, soft_cap={self.soft_cap}")
