"""q/k RMSNorm (optional), rotary embedding and the KV-cache write in one launch.

Between the q/k/v projection and attention a decode step otherwise runs up to four small
kernels per layer (q norm, k norm, rotary, KV write), each a launch whose fixed cost is most
of its time at decode, and the rotated k makes a round trip through memory before the cache
write reads it back. Here one program per (token, block of heads) loads its q, k and v heads
once, normalises q and k per head (Qwen3, Gemma 3), rotates them (NeoX halves, partial rotary
passes the tail through), writes q out and k, v straight into their cache slot.
Numerics follow the unfused ops: the normalised heads are rounded to the input dtype before
rotating, as the separate norm kernel's output would be.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from localserve.kernels.triton._common import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    check_last_dim_contiguous,
    check_same_device,
    check_tensor,
    empty,
    next_pow2,
    pdl_launch,
    pdl_wait,
)
from localserve.kernels.triton.rotary import rotate_heads, store_heads


# Positions and slots are views into the step's packed index buffer, 16-byte aligned or not
# by the batch's token count: no alignment specialisation (one scalar load per program).
@triton.jit(do_not_specialize_on_alignment=["positions_ptr", "slot_ptr"])
def _rope_cache_kernel(
    positions_ptr, slot_ptr,            # [num_tokens]
    q_ptr, k_ptr, v_ptr,                # [num_tokens, heads, head_dim], any token/head strides
    q_out_ptr,                          # [num_tokens, num_heads, head_dim] contiguous
    k_cache_ptr, v_cache_ptr,           # [num_blocks, block_size, num_kv_heads, head_dim]
    cos_sin_ptr,                        # [max_positions, rotary_dim]: cos | sin
    q_norm_ptr, k_norm_ptr,             # [head_dim] (HAS_NORM)
    num_heads, num_kv_heads, head_dim, stride_cs,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch,
    eps, norm_offset,
    BLOCK_SIZE: tl.constexpr,           # tokens per cache block
    HAS_NORM: tl.constexpr, HALF: tl.constexpr, HALF_PAD: tl.constexpr,
    HAS_TAIL: tl.constexpr, TAIL_PAD: tl.constexpr, HEAD_PAD: tl.constexpr,
    BLOCK_H: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    token = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    pos = tl.load(positions_ptr + token).to(tl.int64)
    offs = tl.arange(0, HALF_PAD)
    half_ok = offs < HALF
    cos = tl.load(cos_sin_ptr + pos * stride_cs + offs, mask=half_ok, other=0.0).to(tl.float32)
    sin = tl.load(cos_sin_ptr + pos * stride_cs + HALF + offs, mask=half_ok,
                  other=0.0).to(tl.float32)

    q_ok = heads < num_heads
    o1, o2, t, m, tm = rotate_heads(q_ptr + token * stride_qt + heads[:, None] * stride_qh, q_ok,
                                    q_norm_ptr, cos, sin, eps, norm_offset, head_dim, HAS_NORM,
                                    HALF, HALF_PAD, HAS_TAIL, TAIL_PAD, BLOCK_H)
    store_heads(q_out_ptr + (token * num_heads + heads[:, None]) * head_dim, o1, o2, t, m, tm,
                 HALF, HALF_PAD, HAS_TAIL, TAIL_PAD)

    slot = tl.load(slot_ptr + token).to(tl.int64)
    kv_ok = (heads < num_kv_heads) & (slot >= 0)   # slot < 0: a padding row, nothing stored
    block = slot // BLOCK_SIZE
    in_block = slot % BLOCK_SIZE
    o1, o2, t, m, tm = rotate_heads(k_ptr + token * stride_kt + heads[:, None] * stride_kh,
                                    kv_ok, k_norm_ptr, cos, sin, eps, norm_offset, head_dim,
                                    HAS_NORM, HALF, HALF_PAD, HAS_TAIL, TAIL_PAD, BLOCK_H)
    store_heads(k_cache_ptr + block * stride_kcb + in_block * stride_kcs
                 + heads[:, None] * stride_kch, o1, o2, t, m, tm,
                 HALF, HALF_PAD, HAS_TAIL, TAIL_PAD)
    dims = tl.arange(0, HEAD_PAD)
    v_mask = kv_ok[:, None] & (dims[None, :] < head_dim)
    v = tl.load(v_ptr + token * stride_vt + heads[:, None] * stride_vh + dims[None, :],
                mask=v_mask, other=0.0)
    tl.store(v_cache_ptr + block * stride_vcb + in_block * stride_vcs
             + heads[:, None] * stride_vch + dims[None, :],
             v.to(v_cache_ptr.dtype.element_ty), mask=v_mask)


def rope_and_cache(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   cos_sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   slot_mapping: torch.Tensor, q_norm: torch.Tensor | None = None,
                   k_norm: torch.Tensor | None = None, eps: float = 1e-6,
                   norm_offset: float = 0.0) -> torch.Tensor:
    """Normalises (optional) and rotates q and k, stores k and v at their cache slots.

    Args:
        positions, slot_mapping: [T] int32/int64; a slot < 0 stores nothing (slots are not
            range-checked: that would need a device sync).
        q [T, num_heads, hd], k and v [T, num_kv_heads, hd]: one float dtype, contiguous in
            the last dim (views into a fused qkv output are fine).
        cos_sin: [max_positions, rotary_dim] (reference.rope_cos_sin), rotary_dim <= hd.
        k_cache, v_cache: [num_blocks, block_size, num_kv_heads, hd], written in place.
        q_norm, k_norm: per-head RMSNorm weights [hd] (both or neither); eps and norm_offset
            as in reference.rms_norm.
    Returns:
        q rotated (and normalised), a new contiguous [T, num_heads, hd] tensor in q's dtype.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, ndim=3, dtypes=FLOAT_DTYPES)
        check_last_dim_contiguous(name, t)
    check_tensor("positions", positions, ndim=1, dtypes=INDEX_DTYPES)
    check_tensor("slot_mapping", slot_mapping, ndim=1, dtypes=INDEX_DTYPES)
    check_tensor("cos_sin", cos_sin, ndim=2, dtypes=FLOAT_DTYPES)
    check_tensor("k_cache", k_cache, ndim=4, dtypes=FLOAT_DTYPES)
    check_tensor("v_cache", v_cache, ndim=4, dtypes=FLOAT_DTYPES)
    check_last_dim_contiguous("cos_sin", cos_sin)
    check_last_dim_contiguous("k_cache", k_cache)
    check_last_dim_contiguous("v_cache", v_cache)
    if (q_norm is None) != (k_norm is None):
        raise ValueError("pass both q_norm and k_norm, or neither")
    tensors = {"positions": positions, "q": q, "k": k, "v": v, "cos_sin": cos_sin,
               "k_cache": k_cache, "v_cache": v_cache, "slot_mapping": slot_mapping}
    num_tokens, num_heads, head_dim = q.shape
    if q_norm is not None and k_norm is not None:
        for name, w in (("q_norm", q_norm), ("k_norm", k_norm)):
            check_tensor(name, w, ndim=1, dtypes=FLOAT_DTYPES)
            if w.shape[0] != head_dim:
                raise ValueError(f"{name} has {w.shape[0]} entries, head_dim is {head_dim}")
        q_norm, k_norm = q_norm.contiguous(), k_norm.contiguous()
        tensors.update(q_norm=q_norm, k_norm=k_norm)
    check_same_device(**tensors)
    num_kv_heads = k.shape[1]
    if v.shape != k.shape or k.shape[0] != num_tokens or k.shape[2] != head_dim:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must both be "
                         f"[{num_tokens}, num_kv_heads, {head_dim}]")
    if k_cache.shape != v_cache.shape or tuple(k_cache.shape[2:]) != (num_kv_heads, head_dim):
        raise ValueError(f"caches {tuple(k_cache.shape)} / {tuple(v_cache.shape)} must be "
                         f"[num_blocks, block_size, {num_kv_heads}, {head_dim}]")
    if positions.shape[0] != num_tokens or slot_mapping.shape[0] != num_tokens:
        raise ValueError(f"positions and slot_mapping need {num_tokens} entries")
    rotary_dim = cos_sin.shape[1]
    if rotary_dim % 2 or not 2 <= rotary_dim <= head_dim:
        raise ValueError(f"rotary_dim (cos_sin.shape[1]) = {rotary_dim} must be even and in "
                         f"2..head_dim ({head_dim})")
    q_out = empty((num_tokens, num_heads, head_dim), q.dtype, q.device)
    if num_tokens == 0:
        return q_out
    half = rotary_dim // 2
    half_pad = next_pow2(half)
    tail = head_dim - 2 * half
    heads = max(num_heads, num_kv_heads)
    block_h = min(next_pow2(heads), max(1, 2048 // next_pow2(head_dim)))
    norms = (q_norm, k_norm) if q_norm is not None else (q_out, q_out)  # unread without norm
    _rope_cache_kernel[(num_tokens, triton.cdiv(heads, block_h))](
        positions, slot_mapping, q, k, v, q_out, k_cache, v_cache, cos_sin, *norms,
        num_heads, num_kv_heads, head_dim, cos_sin.stride(0),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        float(eps), float(norm_offset),
        BLOCK_SIZE=k_cache.shape[1], HAS_NORM=q_norm is not None, HALF=half,
        HALF_PAD=half_pad, HAS_TAIL=tail > 0, TAIL_PAD=next_pow2(max(tail, 1)),
        HEAD_PAD=next_pow2(head_dim), BLOCK_H=block_h,
        num_warps=4 if block_h * next_pow2(head_dim) >= 1024 else 2, **pdl_launch(q.device),
    )
    return q_out
