"""The one-row fused gemvs (Triton) against kernels/reference.py: vector_gemv vs linear,
norm_gemv vs norm_linear (plain and gated), act_gemv vs act_linear.

Interpreter (CPU) at small shapes without a GPU (fp32, fp16), Llama-3-8B shapes on one (bf16,
fp16). Outputs start NaN. Tolerance: relative to max |reference|, the output dtype's rounding
(ELEMENTWISE_TOL); both sides accumulate in fp32. The new residual is x + residual rounded to
x's dtype on both sides: equal within one rounding of the sum.
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
    act_gemv,
    norm_gemv,
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


def _weights(n: int, k: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    return ((torch.randn(n, k, device=DEV) / k ** 0.5).to(dtype),
            torch.randn(n, device=DEV).to(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,k", SHAPES)
def test_vector_gemv_matches_reference(n, k, dtype, seed):
    x = torch.randn(1, k, device=DEV).to(dtype)
    w, b = _weights(n, k, dtype)
    for bias in (None, b):
        with poisoned_outputs():
            out = vector_gemv(x, w, bias)
        assert out.shape == (1, n) and out.dtype == dtype
        assert rel_error(out, reference.linear(x, w, bias)) <= ELEMENTWISE_TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("variant", ["residual", "first-layer", "gemma-offset-bias",
                                     "gated-silu", "gated-gelu"])
def test_norm_gemv_matches_reference(variant, n, k, dtype, seed):
    x = torch.randn(1, k, device=DEV).to(dtype)
    residual = None if variant == "first-layer" else torch.randn(1, k, device=DEV).to(dtype)
    g = torch.randn(k, device=DEV).to(dtype)
    offset = 1.0 if variant == "gemma-offset-bias" else 0.0
    gated = {"gated-silu": "silu", "gated-gelu": "gelu_tanh"}.get(variant)
    w, b = _weights(2 * n if gated else n, k, dtype)
    bias = b if variant == "gemma-offset-bias" else None
    ref, ref_res = reference.norm_linear(x, residual, g, 1e-6, offset, w, bias, gated)
    with poisoned_outputs():
        out, new_res = norm_gemv(x, residual, g, 1e-6, offset, w, bias, gated=gated)
    assert out.shape == (1, n) and out.dtype == dtype
    assert rel_error(out, ref) <= ELEMENTWISE_TOL[dtype]
    if residual is None:
        assert new_res is None
    else:
        assert rel_error(new_res, ref_res) <= ELEMENTWISE_TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("n,k", SHAPES[1:])
def test_act_gemv_matches_reference(n, k, activation, dtype, seed):
    gate_up = torch.randn(1, 2 * k, device=DEV).to(dtype)
    w, b = _weights(n, k, dtype)
    with poisoned_outputs():
        out = act_gemv(gate_up, activation, w, b)
    assert rel_error(out, reference.act_linear(gate_up, activation, w, b)) <= \
        ELEMENTWISE_TOL[dtype]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.block_n}x{c.block_k}")
@pytest.mark.parametrize("n,k", [SHAPES[1], SHAPES[2], (24, 100)])
def test_every_tile_config_is_exact_enough(config, n, k, seed):
    """Every tile a shape may get gives the same answer (K even and uneven over the tiles,
    shorter than one; columns not a multiple of BLOCK_N), through the norm and gated paths."""
    dtype = DTYPES[0]
    x, r = torch.randn(2, 1, k, device=DEV).to(dtype)
    g = torch.randn(k, device=DEV).to(dtype)
    w = torch.randn(2 * n, k, device=DEV).to(dtype)
    with poisoned_outputs():
        plain = vector_gemv(x, w, config=config)
        gated, _ = norm_gemv(x, r, g, 1e-6, 0.0, w, gated="silu", config=config)
    assert rel_error(plain, reference.linear(x, w)) <= ELEMENTWISE_TOL[dtype]
    ref, _ = reference.norm_linear(x, r, g, 1e-6, 0.0, w, gated="silu")
    assert rel_error(gated, ref) <= ELEMENTWISE_TOL[dtype]


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
    g = torch.ones(8, device=DEV)
    with pytest.raises(ValueError, match="one row"):
        vector_gemv(torch.randn(2, 8, device=DEV), w)
    with pytest.raises(ValueError, match="features"):
        vector_gemv(x, torch.randn(4, 9, device=DEV))
    with pytest.raises(TypeError):
        vector_gemv(x, w.half())
    with pytest.raises(ValueError, match="norm_weight"):
        norm_gemv(x, None, torch.ones(9, device=DEV), 1e-6, 0.0, w)
    with pytest.raises(ValueError, match="residual"):
        norm_gemv(x, torch.randn(1, 8, device=DEV).half(), g, 1e-6, 0.0, w)
    with pytest.raises(ValueError, match="odd"):
        norm_gemv(x, None, g, 1e-6, 0.0, torch.randn(5, 8, device=DEV), gated="silu")
    with pytest.raises(ValueError, match="no bias"):
        norm_gemv(x, None, g, 1e-6, 0.0, w, torch.ones(4, device=DEV), gated="silu")
    with pytest.raises(ValueError, match="activation"):
        act_gemv(torch.randn(1, 16, device=DEV), "relu", w)
    with pytest.raises(ValueError, match="even"):
        act_gemv(torch.randn(1, 15, device=DEV), "silu", w)
