"""Fusing projections that read the same input: q/k/v into one matmul, gate/up into another.

One large GEMM (or GEMV at decode) instead of three small ones launches less and streams the
weights at a better fraction of the bandwidth. Only float weights fuse: GGUF files quantize
the parts with different types, so quantized layers keep their own methods.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from localserve.layers.linear import Linear, UnquantizedMethod

GROUPS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def stacked_linear(parts: Sequence[Linear]) -> Linear | None:
    """A Linear over the parts' outputs concatenated, its biases stacked, its weight left for
    the caller to set (created on the meta device); None when only some parts have a bias."""
    has_bias = [p.bias is not None for p in parts]
    if any(has_bias) and not all(has_bias):
        return None
    with torch.device("meta"):
        fused = Linear(parts[0].in_features, sum(p.out_features for p in parts), all(has_bias))
    if all(has_bias):
        fused.bias = nn.Parameter(torch.cat([p.bias for p in parts]), requires_grad=False)
    return fused


def fused_linear(parts: Sequence[Linear]) -> Linear | None:
    """One Linear whose output is the parts' outputs concatenated, or None if they can't fuse."""
    if any(type(p.method) is not UnquantizedMethod for p in parts):
        return None
    weights = [p.weight for p in parts]
    if len({(w.dtype, w.device, w.shape[1]) for w in weights}) != 1:
        return None
    fused = stacked_linear(parts)
    if fused is not None:
        fused.weight = nn.Parameter(torch.cat(weights), requires_grad=False)
    return fused


def fuse_projections(model: nn.Module,
                     fuse: Callable[[Sequence[Linear]], nn.Module | None] = fused_linear) -> int:
    """Replaces each q/k/v and gate/up group by one module from `fuse(parts)` (None: leave
    the group alone); returns how many fused. The default fuses float weights into one Linear;
    a backend passes its own (the C backend: one multi-weight matmul over raw GGUF blocks).

    A module opts in by declaring the fused attribute (`qkv_proj` / `gate_up_proj`, None
    until fused) and using it in forward when set: the fused module's output is the parts'
    outputs concatenated.
    """
    count = 0
    for module in model.modules():
        for fused_name, names in GROUPS.items():
            if getattr(module, fused_name, False) is not None:
                continue  # not declared by this module, or already fused
            parts = [getattr(module, n) for n in names]
            fused = fuse(parts)
            if fused is None:
                continue
            setattr(module, fused_name, fused)
            for n in names:
                delattr(module, n)
            count += 1
    return count


def declare_qkv(attn: nn.Module, hidden: int, num_heads: int, num_kv_heads: int,
                head_dim: int, qkv_bias: bool, o_bias: bool) -> None:
    """Gives an attention module q/k/v/o projections (HF parameter names) and the fusion slot
    that `fuse_projections` fills and `project_qkv` reads."""
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    attn.num_heads, attn.num_kv_heads, attn.head_dim = num_heads, num_kv_heads, head_dim
    attn.q_proj = Linear(hidden, q_size, qkv_bias)
    attn.k_proj = Linear(hidden, kv_size, qkv_bias)
    attn.v_proj = Linear(hidden, kv_size, qkv_bias)
    attn.o_proj = Linear(q_size, hidden, o_bias)
    attn.qkv_proj = None  # set by fuse_projections for float weights
    attn.qkv_sizes = (q_size, kv_size, kv_size)


def project_qkv(attn: nn.Module, x: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q [T, heads, hd], k and v [T, kv_heads, hd] of an attention module's input, through
    its fused `qkv_proj` when set, else through q_proj/k_proj/v_proj.

    Fused outputs are strided views of one tensor, not copies: a copy is a kernel launch per
    part per layer on a GPU, and the consumers (rotary, the KV write, norms) accept strides."""
    if attn.qkv_proj is not None:
        q, k, v = attn.qkv_proj(x).split(attn.qkv_sizes, dim=-1)
    else:
        q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
    t = x.shape[0]
    return (q.view(t, attn.num_heads, attn.head_dim), k.view(t, attn.num_kv_heads, attn.head_dim),
            v.view(t, attn.num_kv_heads, attn.head_dim))
