"""write_kv (Triton) against kernels/reference.py: scatter by slot mapping, skip negative slots.

Interpreter (CPU) at small shapes without a GPU, model-sized shapes on one; caches start as NaN
so a missed or misplaced store is visible, and untouched slots must stay NaN.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from localserve.kernels import reference
from localserve.kernels.triton import write_kv
from localserve.kernels.triton.cache import kv_cache_pages
from localserve.kernels.triton.testing import device, full_shapes

FULL = full_shapes()
DEV = device()
DTYPES = [torch.float16, torch.bfloat16, torch.float32]


def _caches(num_blocks, block_size, num_kv_heads, head_dim, dtype, heads_major=False):
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    return tuple(kv_cache_pages(shape, dtype, DEV, heads_major).fill_(float("nan"))
                 for _ in range(2))


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equal, NaN included (untouched slots must stay NaN in both)."""
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("num_kv_heads", "head_dim", "block_size"),
                         [(8, 128, 16), (1, 256, 32), (4, 80, 16)] if FULL
                         else [(2, 64, 4), (1, 80, 8), (3, 128, 16)])
def test_matches_reference(dtype, num_kv_heads, head_dim, block_size, seed):
    num_tokens = 3000 if FULL else 13
    num_blocks = -(-num_tokens // block_size) + 4
    key = torch.randn(num_tokens, num_kv_heads, head_dim, device=DEV).to(dtype)
    value = torch.randn(num_tokens, num_kv_heads, head_dim, device=DEV).to(dtype)
    # Distinct random slots, about one token in five padding (-1).
    slots = torch.randperm(num_blocks * block_size, device=DEV)[:num_tokens]
    slots[torch.rand(num_tokens, device=DEV) < 0.2] = -1
    k_cache, v_cache = _caches(num_blocks, block_size, num_kv_heads, head_dim, dtype)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    write_kv(key, value, k_cache, v_cache, slots)
    reference.write_kv(key, value, k_ref, v_ref, slots)
    assert _same(k_cache, k_ref) and _same(v_cache, v_ref)
    assert k_cache.isnan().any()  # padding and spare slots stayed untouched


def test_heads_major_pages(seed):
    """Pages stored head by head behind the usual view (the CUDA runner's layout)."""
    num_tokens, num_kv_heads, head_dim, block_size = (700, 8, 128, 16) if FULL else (11, 3, 64, 4)
    num_blocks = -(-num_tokens // block_size) + 2
    key, value = (torch.randn(num_tokens, num_kv_heads, head_dim, device=DEV).to(torch.bfloat16)
                  for _ in range(2))
    slots = torch.randperm(num_blocks * block_size, device=DEV)[:num_tokens]
    slots[::4] = -1
    k_cache, v_cache = _caches(num_blocks, block_size, num_kv_heads, head_dim, torch.bfloat16,
                               heads_major=True)
    assert not k_cache.is_contiguous()
    k_ref, v_ref = _caches(num_blocks, block_size, num_kv_heads, head_dim, torch.bfloat16)
    write_kv(key, value, k_cache, v_cache, slots)
    reference.write_kv(key, value, k_ref, v_ref, slots)
    assert _same(k_cache, k_ref) and _same(v_cache, v_ref)


def test_strided_views_int32_slots_and_dtype_conversion(seed):
    """key/value sliced out of a fused qkv output, int32 slots, fp32 inputs into a fp16 cache."""
    num_tokens, num_kv_heads, head_dim = (500, 8, 128) if FULL else (9, 2, 64)
    qkv = torch.randn(num_tokens, 4 + 2 * num_kv_heads, head_dim, device=DEV)
    key, value = qkv[:, 4:4 + num_kv_heads], qkv[:, 4 + num_kv_heads:]
    slots = torch.randperm(num_tokens + 8, device=DEV)[:num_tokens].int()
    k_cache, v_cache = _caches(-(-(num_tokens + 8) // 16), 16, num_kv_heads, head_dim,
                               torch.float16)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    write_kv(key, value, k_cache, v_cache, slots)
    reference.write_kv(key, value, k_ref, v_ref, slots)
    assert _same(k_cache, k_ref) and _same(v_cache, v_ref)


def test_no_tokens_and_all_padding():
    k_cache, v_cache = _caches(2, 4, 2, 64, torch.float16)
    empty = torch.empty(0, 2, 64, dtype=torch.float16, device=DEV)
    write_kv(empty, empty, k_cache, v_cache, torch.empty(0, dtype=torch.int64, device=DEV))
    kv = torch.randn(3, 2, 64, device=DEV).half()
    write_kv(kv, kv, k_cache, v_cache, torch.full((3,), -1, device=DEV))
    assert k_cache.isnan().all() and v_cache.isnan().all()


def test_input_errors():
    k_cache, v_cache = _caches(2, 4, 2, 64, torch.float16)
    kv = torch.randn(3, 2, 64, device=DEV).half()
    slots = torch.arange(3, device=DEV)
    with pytest.raises(ValueError, match="k_cache is"):
        write_kv(kv[:, :1], kv[:, :1], k_cache, v_cache, slots)
    with pytest.raises(ValueError, match="slot_mapping has 2 entries"):
        write_kv(kv, kv, k_cache, v_cache, slots[:2])
    with pytest.raises(TypeError, match="slot_mapping must have dtype"):
        write_kv(kv, kv, k_cache, v_cache, slots.float())
    with pytest.raises(ValueError, match="value shape"):
        write_kv(kv, kv[:2], k_cache, v_cache, slots)
    with pytest.raises(ValueError, match="key must have 3 dimensions"):
        write_kv(kv[0], kv, k_cache, v_cache, slots)
