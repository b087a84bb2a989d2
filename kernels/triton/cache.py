"""KV-cache write: scatter each new token's K/V into the paged cache by slot mapping.

Cache layout (see kernels/reference.py): [num_blocks, block_size, num_kv_heads, head_dim];
slot = block_id * block_size + offset, a negative slot means "do not store" (padding tokens).
Every Triton kernel takes the cache by its strides, so the pages may also be stored head by
head behind that view (`kv_cache_pages`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from localserve.kernels.triton._common import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    check_same_device,
    check_tensor,
    next_pow2,
    pdl_launch,
    pdl_wait,
)


def kv_cache_pages(shape: tuple[int, int, int, int], dtype: torch.dtype,
                   device: torch.device | str, heads_major: bool) -> torch.Tensor:
    """An empty cache of `shape` = [num_blocks, block_size, num_kv_heads, head_dim]. With
    `heads_major` each page is stored [num_kv_heads, block_size, head_dim] behind that view,
    so one head's keys in a page are one contiguous run (a decode program reads a head)."""
    if not heads_major:
        return torch.empty(shape, dtype=dtype, device=device)
    blocks, block_size, heads, dim = shape
    return torch.empty((blocks, heads, block_size, dim), dtype=dtype,
                       device=device).transpose(1, 2)


# slot_mapping is a view into the step's packed index buffer: see rope_cache.py.
@triton.jit(do_not_specialize_on_alignment=["slot_mapping_ptr"])
def _write_kv_kernel(
    key_ptr, value_ptr,                # [num_tokens, num_kv_heads, head_dim]
    k_cache_ptr, v_cache_ptr,          # [num_blocks, block_size, num_kv_heads, head_dim]
    slot_mapping_ptr,                  # [num_tokens]
    num_kv_heads, head_dim,
    stride_kt, stride_kh, stride_kd,
    stride_vt, stride_vh, stride_vd,
    stride_kc_block, stride_kc_slot, stride_kc_head, stride_kc_dim,
    stride_vc_block, stride_vc_slot, stride_vc_head, stride_vc_dim,
    BLOCK_SIZE: tl.constexpr,          # tokens per cache block (page)
    BLOCK_H: tl.constexpr,             # heads per program
    BLOCK_D: tl.constexpr,             # head_dim padded to a power of two
    USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    token = tl.program_id(0)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:
        return
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    dims = tl.arange(0, BLOCK_D)
    mask = (heads[:, None] < num_kv_heads) & (dims[None, :] < head_dim)
    tok = token.to(tl.int64)

    k = tl.load(key_ptr + tok * stride_kt + heads[:, None] * stride_kh + dims[None, :] * stride_kd,
                mask=mask)
    k_dst = (k_cache_ptr + block * stride_kc_block + offset * stride_kc_slot
             + heads[:, None] * stride_kc_head + dims[None, :] * stride_kc_dim)
    tl.store(k_dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)

    v = tl.load(value_ptr + tok * stride_vt + heads[:, None] * stride_vh
                + dims[None, :] * stride_vd, mask=mask)
    v_dst = (v_cache_ptr + block * stride_vc_block + offset * stride_vc_slot
             + heads[:, None] * stride_vc_head + dims[None, :] * stride_vc_dim)
    tl.store(v_dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def write_kv(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
             v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Stores key/value [num_tokens, num_kv_heads, head_dim] at their slots, in place.

    Any strides are accepted for key/value (e.g. views into a fused qkv output) and for the
    caches; values are converted to the cache dtype. Slots < 0 are skipped; a slot beyond the
    cache is the caller's bug and is not checked (that would need a device sync).
    """
    check_tensor("key", key, ndim=3, dtypes=FLOAT_DTYPES)
    check_tensor("value", value, ndim=3, dtypes=FLOAT_DTYPES)
    check_tensor("k_cache", k_cache, ndim=4, dtypes=FLOAT_DTYPES)
    check_tensor("v_cache", v_cache, ndim=4, dtypes=FLOAT_DTYPES)
    check_tensor("slot_mapping", slot_mapping, ndim=1, dtypes=INDEX_DTYPES)
    check_same_device(key=key, value=value, k_cache=k_cache, v_cache=v_cache,
                      slot_mapping=slot_mapping)
    if value.shape != key.shape:
        raise ValueError(f"value shape {tuple(value.shape)} != key shape {tuple(key.shape)}")
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache shape {tuple(v_cache.shape)} != "
                         f"k_cache shape {tuple(k_cache.shape)}")
    num_tokens, num_kv_heads, head_dim = key.shape
    if tuple(k_cache.shape[2:]) != (num_kv_heads, head_dim):
        raise ValueError(f"k_cache is [num_blocks, block_size, {k_cache.shape[2]}, "
                         f"{k_cache.shape[3]}] but key has {num_kv_heads} heads of dim {head_dim}")
    if slot_mapping.shape[0] != num_tokens:
        raise ValueError(f"slot_mapping has {slot_mapping.shape[0]} entries for "
                         f"{num_tokens} tokens")
    if num_tokens == 0:
        return

    block_d = next_pow2(head_dim)
    # About 2K elements per program: all heads of a token for the usual 8 x 128.
    block_h = min(next_pow2(num_kv_heads), max(1, 2048 // block_d))
    grid = (num_tokens, triton.cdiv(num_kv_heads, block_h))
    _write_kv_kernel[grid](
        key, value, k_cache, v_cache, slot_mapping,
        num_kv_heads, head_dim,
        *key.stride(), *value.stride(), *k_cache.stride(), *v_cache.stride(),
        BLOCK_SIZE=k_cache.shape[1], BLOCK_H=block_h, BLOCK_D=block_d,
        num_warps=4 if block_h * block_d >= 1024 else 2, **pdl_launch(key.device),
    )
