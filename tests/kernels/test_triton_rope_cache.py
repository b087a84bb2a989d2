"""rope_and_cache (Triton) against kernels/reference.py: per-head q/k RMSNorm (optional),
NeoX rotary (full and partial) and the KV-cache write in one launch.

Interpreter (CPU) at small shapes without a GPU (fp32, fp16), model shapes on one (bf16,
fp16). q/k/v are strided views of one fused projection output, as the models pass them; some
slots are -1 (padding rows) and must leave the cache untouched. The q output starts NaN.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from localserve.kernels import reference
from localserve.kernels.triton import rope_and_cache
from localserve.kernels.triton._common import poisoned_outputs
from localserve.kernels.triton.cache import kv_cache_pages
from localserve.kernels.triton.testing import (
    ELEMENTWISE_TOL,
    device,
    full_shapes,
    rel_error,
)

FULL = full_shapes()
DEV = device()
DTYPES = [torch.bfloat16, torch.float16] if FULL else [torch.float32, torch.float16]
# (num_tokens, heads, kv_heads, head_dim, rotary_dim): Llama-3 / Qwen3 / Gemma-3-270M-like.
SHAPES = ([(256, 32, 8, 128, 128), (256, 16, 8, 128, 128), (7, 4, 1, 256, 256),
           (33, 8, 2, 96, 64)] if FULL
          else [(5, 4, 2, 32, 32), (3, 2, 1, 48, 32)])


@pytest.mark.parametrize("with_norm", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(shape, dtype, with_norm, seed, heads_major=False):
    t, nh, kvh, hd, rot = shape
    qkv = (torch.randn(t, (nh + 2 * kvh) * hd, device=DEV) * 3).to(dtype)
    q, k, v = (p.view(t, -1, hd) for p in qkv.split([nh * hd, kvh * hd, kvh * hd], dim=-1))
    cos_sin = reference.rope_cos_sin(rot, 4096, 10000.0).to(DEV)
    positions = torch.randint(0, 4096, (t,), device=DEV)
    block_size, num_blocks = 16, t // 16 + 4
    slots = torch.randperm(num_blocks * block_size, device=DEV)[:t]
    slots[::3] = -1  # padding rows store nothing
    shape = (num_blocks, block_size, kvh, hd)
    k_cache, v_cache = (kv_cache_pages(shape, dtype, DEV, heads_major).copy_(
        torch.randn(shape, device=DEV)) for _ in range(2))
    norms = {}
    if with_norm:
        norms = {"q_norm": torch.randn(hd, device=DEV).to(dtype) * 0.1,
                 "k_norm": torch.randn(hd, device=DEV).to(dtype) * 0.1,
                 "eps": 1e-6, "norm_offset": 1.0}
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    q_ref = reference.rope_and_cache(positions, q, k, v, cos_sin, k_ref, v_ref, slots, **norms)
    with poisoned_outputs():
        q_out = rope_and_cache(positions, q, k, v, cos_sin, k_cache, v_cache, slots, **norms)
    tol = ELEMENTWISE_TOL[dtype] * (4 if with_norm else 1)  # norm then rotate: two roundings
    assert q_out.shape == (t, nh, hd) and q_out.dtype == dtype
    assert rel_error(q_out, q_ref) <= tol
    assert rel_error(k_cache, k_ref) <= tol
    assert torch.equal(v_cache, v_ref)  # a copy: exact


def test_heads_major_pages(seed):
    """The cache stored head by head behind the usual view (the CUDA runner's layout)."""
    test_matches_reference(SHAPES[0], DTYPES[0], True, seed, heads_major=True)


def test_rejects_bad_input():
    t, nh, kvh, hd = 2, 2, 1, 32
    q = torch.randn(t, nh, hd, device=DEV)
    k = torch.randn(t, kvh, hd, device=DEV)
    cache = torch.zeros(4, 16, kvh, hd, device=DEV)
    pos = torch.zeros(t, dtype=torch.int64, device=DEV)
    cos_sin = reference.rope_cos_sin(hd, 64, 10000.0).to(DEV)
    with pytest.raises(ValueError, match="both"):
        rope_and_cache(pos, q, k, k, cos_sin, cache, cache.clone(), pos,
                       q_norm=torch.ones(hd, device=DEV))
    with pytest.raises(ValueError, match="caches"):
        rope_and_cache(pos, q, k, k, cos_sin, cache[..., :16], cache.clone()[..., :16], pos)
    with pytest.raises(ValueError, match="rotary_dim"):
        rope_and_cache(pos, q, k, k, reference.rope_cos_sin(64, 64, 1e4).to(DEV), cache,
                       cache.clone(), pos)
