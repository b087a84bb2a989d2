"""Paged attention and the KV-cache write over the shared layout, with the signatures of
kernels/reference.py. q is computed in fp32; KV caches may be fp32, fp16 or bf16.
"""

from __future__ import annotations

import torch

from localserve.kernels.cpu._runtime import DTYPE_CODES, check, lib


def _cache_dtype(cache: torch.Tensor, name: str) -> int:
    if not cache.is_cpu or not cache.is_contiguous() or cache.dim() != 4:
        raise ValueError(f"{name} must be a contiguous CPU tensor "
                         "[num_blocks, block_size, num_kv_heads, head_dim]")
    if cache.dtype not in DTYPE_CODES:
        raise TypeError(f"{name} dtype {cache.dtype} unsupported (float32/float16/bfloat16)")
    return DTYPE_CODES[cache.dtype]


def _int32(t: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dtype.is_floating_point:
        raise TypeError(f"{name} must be an integer tensor")
    if t.dtype is torch.int32 and t.is_contiguous():  # the common case: no copy, no dispatch
        return t
    return t.to(torch.int32).contiguous()


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    block_tables: torch.Tensor, query_start_loc: torch.Tensor,
                    seq_lens: torch.Tensor, scale: float, sliding_window: int | None = None,
                    soft_cap: float | None = None) -> torch.Tensor:
    """Causal attention of packed queries over paged K/V; see kernels.reference."""
    kv_code = _cache_dtype(k_cache, "k_cache")
    if v_cache.shape != k_cache.shape or v_cache.dtype != k_cache.dtype:
        raise ValueError("v_cache must match k_cache in shape and dtype")
    _cache_dtype(v_cache, "v_cache")
    if q.dim() != 3 or q.shape[2] != k_cache.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} must be [num_tokens, num_heads, "
                         f"{k_cache.shape[3]}]")
    num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
    if q.shape[1] % num_kv_heads:
        raise ValueError(f"num_heads {q.shape[1]} is not a multiple of num_kv_heads "
                         f"{num_kv_heads}")
    qf = q if q.dtype is torch.float32 and q.is_contiguous() else q.float().contiguous()
    bt = _int32(block_tables, "block_tables")
    qsl = _int32(query_start_loc, "query_start_loc")
    lens = _int32(seq_lens, "seq_lens")
    num_seqs = lens.numel()
    if bt.dim() != 2 or bt.shape[0] < num_seqs or qsl.numel() != num_seqs + 1:
        raise ValueError("block_tables must be [num_seqs, max_blocks] and query_start_loc "
                         "[num_seqs + 1]")
    out = torch.empty_like(qf)
    check(lib().ls_paged_attention(
        qf.data_ptr(), qf.shape[0], qf.shape[1], head_dim, k_cache.data_ptr(),
        v_cache.data_ptr(), kv_code, num_blocks, block_size, num_kv_heads, bt.data_ptr(),
        bt.shape[1], qsl.data_ptr(), lens.data_ptr(), num_seqs, float(scale),
        int(sliding_window or 0), float(soft_cap or 0.0), out.data_ptr()),
        "paged_attention (block table, query_start_loc or seq_lens out of range)")
    return out if q.dtype == torch.float32 else out.to(q.dtype)


def write_kv(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
             v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Stores key/value [num_tokens, num_kv_heads, head_dim] at their slots, in place."""
    kv_code = _cache_dtype(k_cache, "k_cache")
    if v_cache.shape != k_cache.shape or v_cache.dtype != k_cache.dtype:
        raise ValueError("v_cache must match k_cache in shape and dtype")
    _cache_dtype(v_cache, "v_cache")
    num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
    want = (key.shape[0], num_kv_heads, head_dim)
    if key.shape != want or value.shape != want or key.dtype != value.dtype:
        raise ValueError(f"key/value must both be {want} of one dtype")
    if key.dtype not in DTYPE_CODES:
        raise TypeError(f"key dtype {key.dtype} unsupported")
    slots = slot_mapping if slot_mapping.dtype is torch.int64 else slot_mapping.to(torch.int64)
    slots = slots.contiguous()
    if slots.numel() != key.shape[0]:
        raise ValueError("slot_mapping must have one slot per token")
    key, value = key.contiguous(), value.contiguous()
    check(lib().ls_write_kv(key.data_ptr(), value.data_ptr(), DTYPE_CODES[key.dtype],
                            k_cache.data_ptr(), v_cache.data_ptr(), kv_code, key.shape[0],
                            num_kv_heads, head_dim, num_blocks, block_size, slots.data_ptr()),
          f"write_kv (a slot >= {num_blocks * block_size})")
