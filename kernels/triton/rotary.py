"""Rotary position embedding, NeoX style (pairs = first half / second half of the rotary dims).

Partial rotary: only the first `rotary_dim` = cos_sin.shape[1] dims of each head rotate, the
rest pass through. q and k are handled by one launch (one program per token and head block).
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


@triton.jit
def rotate_heads(src, heads_ok, w_ptr, cos, sin, eps, norm_offset, head_dim,
                 HAS_NORM: tl.constexpr, HALF: tl.constexpr, HALF_PAD: tl.constexpr,
                 HAS_TAIL: tl.constexpr, TAIL_PAD: tl.constexpr, BLOCK_H: tl.constexpr):
    """Heads at src [BLOCK_H, 1] rotated (and with HAS_NORM first RMS-normalised by w_ptr,
    rounded to the input dtype as a separate norm kernel would store them) -> (first half,
    second half, tail) in fp32, plus the masks to store them with; the tail is the dims past
    the rotary ones (loaded with HAS_TAIL). Shared with rope_cache.py."""
    offs = tl.arange(0, HALF_PAD)
    mask = heads_ok[:, None] & (offs[None, :] < HALF)
    x_in = tl.load(src + offs[None, :], mask=mask, other=0.0)
    in_ty = x_in.dtype
    x1 = x_in.to(tl.float32)
    x2 = tl.load(src + HALF + offs[None, :], mask=mask, other=0.0).to(tl.float32)
    tail_offs = 2 * HALF + tl.arange(0, TAIL_PAD)
    tail_mask = heads_ok[:, None] & (tail_offs[None, :] < head_dim)
    tail = tl.zeros([BLOCK_H, TAIL_PAD], dtype=tl.float32)
    if HAS_TAIL:
        tail = tl.load(src + tail_offs[None, :], mask=tail_mask, other=0.0).to(tl.float32)
    if HAS_NORM:
        ss = tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1) + tl.sum(tail * tail, axis=1)
        inv = 1.0 / tl.sqrt(ss / head_dim + eps)
        half_ok = offs < HALF
        w1 = tl.load(w_ptr + offs, mask=half_ok, other=0.0).to(tl.float32) + norm_offset
        w2 = tl.load(w_ptr + HALF + offs, mask=half_ok, other=0.0).to(tl.float32) + norm_offset
        x1 = (x1 * inv[:, None] * w1[None, :]).to(in_ty).to(tl.float32)
        x2 = (x2 * inv[:, None] * w2[None, :]).to(in_ty).to(tl.float32)
        if HAS_TAIL:
            wt = tl.load(w_ptr + tail_offs, mask=tail_offs < head_dim, other=0.0).to(tl.float32)
            tail = (tail * inv[:, None] * (wt + norm_offset)[None, :]).to(in_ty).to(tl.float32)
    out1 = x1 * cos[None, :] - x2 * sin[None, :]
    out2 = x2 * cos[None, :] + x1 * sin[None, :]
    return out1, out2, tail, mask, tail_mask


@triton.jit
def store_heads(dst, out1, out2, tail, mask, tail_mask,
                 HALF: tl.constexpr, HALF_PAD: tl.constexpr, HAS_TAIL: tl.constexpr,
                 TAIL_PAD: tl.constexpr):
    offs = tl.arange(0, HALF_PAD)
    ty = dst.dtype.element_ty
    tl.store(dst + offs[None, :], out1.to(ty), mask=mask)
    tl.store(dst + HALF + offs[None, :], out2.to(ty), mask=mask)
    if HAS_TAIL:
        tl.store(dst + (2 * HALF + tl.arange(0, TAIL_PAD))[None, :], tail.to(ty), mask=tail_mask)


@triton.jit
def _rotate_heads(src_ptr, dst_ptr, num_heads, stride_st, stride_sh, stride_dt, stride_dh,
                  token, cos, sin, head_dim,
                  HALF: tl.constexpr, BLOCK_H: tl.constexpr, HALF_PAD: tl.constexpr,
                  COPY_TAIL: tl.constexpr, TAIL_PAD: tl.constexpr):
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    src = src_ptr + token * stride_st + heads[:, None] * stride_sh
    dst = dst_ptr + token * stride_dt + heads[:, None] * stride_dh
    out1, out2, tail, mask, tail_mask = rotate_heads(
        src, heads < num_heads, src_ptr, cos, sin, 0.0, 0.0, head_dim, False, HALF, HALF_PAD,
        COPY_TAIL, TAIL_PAD, BLOCK_H)
    store_heads(dst, out1, out2, tail, mask, tail_mask, HALF, HALF_PAD, COPY_TAIL, TAIL_PAD)


@triton.jit
def _rotary_kernel(
    positions_ptr,                      # [num_tokens]
    q_ptr, k_ptr,                       # [num_tokens, num_heads | num_kv_heads, head_dim]
    q_out_ptr, k_out_ptr,               # same shapes (may alias q/k: in place)
    cos_sin_ptr,                        # [max_positions, rotary_dim]: cos | sin
    num_heads, num_kv_heads, head_dim, stride_cs,
    stride_qt, stride_qh, stride_kt, stride_kh,
    stride_qot, stride_qoh, stride_kot, stride_koh,
    HALF: tl.constexpr, HALF_PAD: tl.constexpr, BLOCK_H: tl.constexpr,
    COPY_TAIL: tl.constexpr, TAIL_PAD: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + token).to(tl.int64)
    offs = tl.arange(0, HALF_PAD)
    half_ok = offs < HALF
    cos = tl.load(cos_sin_ptr + pos * stride_cs + offs, mask=half_ok, other=0.0).to(tl.float32)
    sin = tl.load(cos_sin_ptr + pos * stride_cs + HALF + offs, mask=half_ok,
                  other=0.0).to(tl.float32)
    _rotate_heads(q_ptr, q_out_ptr, num_heads, stride_qt, stride_qh, stride_qot, stride_qoh,
                  token, cos, sin, head_dim, HALF, BLOCK_H, HALF_PAD, COPY_TAIL, TAIL_PAD)
    _rotate_heads(k_ptr, k_out_ptr, num_kv_heads, stride_kt, stride_kh, stride_kot, stride_koh,
                  token, cos, sin, head_dim, HALF, BLOCK_H, HALF_PAD, COPY_TAIL, TAIL_PAD)


def rotary_embedding(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                     cos_sin: torch.Tensor, *,
                     inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """NeoX rotation of q [T, num_heads, head_dim] and k [T, num_kv_heads, head_dim].

    Args:
        positions: [T] int32/int64 positions (indices into cos_sin; not range-checked).
        cos_sin: [max_positions, rotary_dim], cos in the first half, sin in the second
            (reference.rope_cos_sin); rotary_dim <= head_dim, even.
        inplace: rotate q and k in place and return them; otherwise return new tensors and
            leave q and k untouched (the reference's behaviour).
    Returns:
        (q_rotated, k_rotated) in q's and k's dtypes.
    """
    check_tensor("positions", positions, ndim=1, dtypes=INDEX_DTYPES)
    check_tensor("q", q, ndim=3, dtypes=FLOAT_DTYPES)
    check_tensor("k", k, ndim=3, dtypes=FLOAT_DTYPES)
    check_tensor("cos_sin", cos_sin, ndim=2, dtypes=FLOAT_DTYPES)
    check_same_device(positions=positions, q=q, k=k, cos_sin=cos_sin)
    num_tokens, num_heads, head_dim = q.shape
    if k.shape[0] != num_tokens or k.shape[2] != head_dim:
        raise ValueError(f"k shape {tuple(k.shape)} does not match q shape {tuple(q.shape)} "
                         "in tokens and head_dim")
    if positions.shape[0] != num_tokens:
        raise ValueError(f"positions has {positions.shape[0]} entries for {num_tokens} tokens")
    rotary_dim = cos_sin.shape[1]
    if rotary_dim % 2 or not 2 <= rotary_dim <= head_dim:
        raise ValueError(f"rotary_dim (cos_sin.shape[1]) = {rotary_dim} must be even and in "
                         f"2..head_dim ({head_dim})")
    check_last_dim_contiguous("q", q)
    check_last_dim_contiguous("k", k)
    check_last_dim_contiguous("cos_sin", cos_sin)
    if inplace:
        q_out, k_out = q, k
    else:
        q_out = empty(tuple(q.shape), q.dtype, q.device)
        k_out = empty(tuple(k.shape), k.dtype, k.device)
    num_kv_heads = k.shape[1]
    if num_tokens == 0 or max(num_heads, num_kv_heads) == 0:
        return q_out, k_out

    half = rotary_dim // 2
    half_pad = next_pow2(half)
    copy_tail = not inplace and 2 * half < head_dim
    block_h = min(next_pow2(max(num_heads, num_kv_heads)), max(1, 4096 // (2 * half_pad)))
    grid = (num_tokens, triton.cdiv(max(num_heads, num_kv_heads), block_h))
    _rotary_kernel[grid](
        positions, q, k, q_out, k_out, cos_sin,
        num_heads, num_kv_heads, head_dim, cos_sin.stride(0),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        q_out.stride(0), q_out.stride(1), k_out.stride(0), k_out.stride(1),
        HALF=half, HALF_PAD=half_pad, BLOCK_H=block_h,
        COPY_TAIL=copy_tail, TAIL_PAD=next_pow2(max(1, head_dim - 2 * half)),
        num_warps=4, **pdl_launch(q.device),
    )
    return q_out, k_out
