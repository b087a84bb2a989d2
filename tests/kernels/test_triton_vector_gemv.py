"""vector_gemv (Triton), the one-row decode matmul, against kernels/reference.py's fp32 linear.

Interpreter (CPU) at small shapes without a GPU (fp32, fp16), Llama-3-8B shapes on one (bf16,
fp16). Outputs start NaN. Tolerance: relative to max |reference|, the output dtype's rounding
(ELEMENTWISE_TOL); both sides accumulate in fp32.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from localserve.kernels import reference
from localserve.kernels.triton._common import poisoned_outputs
from localserve.kernels.triton.testing import (
    ELEMENTWISE_TOL,
    device,
    full_shapes,
    rel_error,
)
from localserve.kernels.triton.vector_gemv import (
    VectorGemvConfig,
    vector_config,
    vector_gemv,
)

FULL = full_shapes()
DEV = device()
DTYPES = [torch.bfloat16, torch.float16] if FULL else [torch.float32, torch.float16]
# (N, K): q/k/v, o, down of Llama-3-8B; odd sizes that leave partial column and K blocks.
SHAPES = ([(6144, 4096), (4096, 4096), (4096, 14336), (1000, 4100)] if FULL
          else [(64, 256), (40, 300), (24, 1100)])
CONFIGS = [VectorGemvConfig(32, 256, 4, 4), VectorGemvConfig(8, 64, 4, 2),
           VectorGemvConfig(16, 128, 4, 1), VectorGemvConfig(4, 512, 4, 1)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,k", SHAPES)
def test_vector_gemv_matches_reference(n, k, dtype, seed):
    x = torch.randn(1, k, device=DEV).to(dtype)
    w = (torch.randn(n, k, device=DEV) / k ** 0.5).to(dtype)
    b = torch.randn(n, device=DEV).to(dtype)
    for bias in (None, b):
        with poisoned_outputs():
            out = vector_gemv(x, w, bias)
        assert out.shape == (1, n) and out.dtype == dtype
        assert rel_error(out, reference.linear(x, w, bias)) <= ELEMENTWISE_TOL[dtype]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.block_n}x{c.block_k}")
@pytest.mark.parametrize("n,k", [SHAPES[1], SHAPES[2], (24, 100)])
def test_every_tile_config_is_exact_enough(config, n, k, seed):
    """Every tile a shape may get gives the same answer (K even and uneven over the tiles,
    shorter than one; columns not a multiple of BLOCK_N)."""
    dtype = DTYPES[0]
    x = torch.randn(1, k, device=DEV).to(dtype)
    w = torch.randn(n, k, device=DEV).to(dtype)
    with poisoned_outputs():
        out = vector_gemv(x, w, config=config)
    assert rel_error(out, reference.linear(x, w)) <= ELEMENTWISE_TOL[dtype]


@pytest.mark.parametrize("n,k", [(1152, 640), (40, 1100)])
def test_engine_tiles_match_reference(n, k, seed):
    """The tiles vector_config gives a short row (Gemma 3 270M's 640) and a long one."""
    dtype = DTYPES[0]
    x = torch.randn(1, k, device=DEV).to(dtype)
    w = torch.randn(n, k, device=DEV).to(dtype)
    cfg = vector_config(n, k)
    assert cfg.block_k <= 2 * k and cfg.block_k & (cfg.block_k - 1) == 0
    with poisoned_outputs():
        out = vector_gemv(x, w)
    assert rel_error(out, reference.linear(x, w)) <= ELEMENTWISE_TOL[dtype]


def test_rejects_bad_input():
    x = torch.randn(1, 8, device=DEV)
    w = torch.randn(4, 8, device=DEV)
    with pytest.raises(ValueError, match="one row"):
        vector_gemv(torch.randn(2, 8, device=DEV), w)
    with pytest.raises(ValueError, match="contiguous"):
        vector_gemv(torch.randn(1, 16, device=DEV)[:, ::2], w)
    with pytest.raises(ValueError, match="features"):
        vector_gemv(x, torch.randn(4, 9, device=DEV))
    with pytest.raises(TypeError):
        vector_gemv(x, w.half())
    with pytest.raises(ValueError, match="bias"):
        vector_gemv(x, w, torch.randn(5, device=DEV))
