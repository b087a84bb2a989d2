"""gemv (Triton) against kernels/reference.py's fp32 linear: decode-sized rows M <= 16.

Interpreter (CPU) at small shapes without a GPU (fp32, fp16), Llama-3-8B projection shapes on
one (bf16, fp16). Outputs start NaN. Tolerance: relative to max |reference|, the output
dtype's rounding (ELEMENTWISE_TOL) - both sides accumulate in fp32.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from localserve.kernels import reference
from localserve.kernels.triton._common import poisoned_outputs
from localserve.kernels.triton.gemv import SMALL_K_CONFIG, GemvConfig, gemv
from localserve.kernels.triton.testing import (
    ELEMENTWISE_TOL,
    device,
    full_shapes,
    rel_error,
)

FULL = full_shapes()
DEV = device()
DTYPES = [torch.bfloat16, torch.float16] if FULL else [torch.float32, torch.float16]
# (N, K): o_proj, qkv, down of Llama-3-8B; odd sizes that leave partial column and K blocks.
SHAPES = ([(4096, 4096), (6144, 4096), (4096, 14336), (1000, 4100)] if FULL
          else [(64, 256), (40, 300), (96, 512)])
CONFIGS = [GemvConfig(), GemvConfig(block_n=16, block_k=128, num_warps=4, num_stages=2),
           GemvConfig(block_n=64, block_k=64, num_warps=8, num_stages=3),
           # The first weight tile loaded ahead (what PDL launches do), K tiles even or not.
           GemvConfig(weights_first=True), GemvConfig(block_k=64, weights_first=True),
           SMALL_K_CONFIG]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("m", [1, 3, 16])
def test_matches_reference(m, n, k, dtype, seed):
    x = torch.randn(m, k, device=DEV).to(dtype)
    w = (torch.randn(n, k, device=DEV) / k ** 0.5).to(dtype)
    b = torch.randn(n, device=DEV).to(dtype)
    for bias in (None, b):
        ref = reference.linear(x, w, bias)
        with poisoned_outputs():
            out = gemv(x, w, bias)
        assert out.shape == (m, n) and out.dtype == dtype
        err = rel_error(out, ref)
        assert err <= ELEMENTWISE_TOL[dtype], f"relative error {err:.3g}"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.block_n}x{c.block_k}"
                         + ("-weights-first" if c.weights_first else ""))
@pytest.mark.parametrize("n,k", [SHAPES[-2], SHAPES[-1], (24, 100)])
def test_every_tile_config_is_exact_enough(config, n, k, seed):
    """The tile sizes a tuner may pick all give the same answer (partial tiles included:
    K even and uneven over the tiles, and shorter than one)."""
    dtype = DTYPES[0]
    x = torch.randn(2, k, device=DEV).to(dtype)
    w = torch.randn(n, k, device=DEV).to(dtype)
    with poisoned_outputs():
        out = gemv(x, w, config=config)
    assert rel_error(out, reference.linear(x, w)) <= ELEMENTWISE_TOL[dtype]


def test_strided_rows_are_read_in_place(seed):
    """x as a column slice of a wider tensor (a fused projection's output) needs no copy."""
    dtype = DTYPES[0]
    n, k = SHAPES[0]
    wide = torch.randn(3, 2 * k, device=DEV).to(dtype)
    x = wide[:, k:]
    w = torch.randn(n, k, device=DEV).to(dtype)
    assert not x.is_contiguous()
    assert rel_error(gemv(x, w), reference.linear(x, w)) <= ELEMENTWISE_TOL[dtype]


def test_rejects_bad_input():
    x = torch.randn(2, 8, device=DEV)
    with pytest.raises(ValueError, match="at most 16 rows"):
        gemv(torch.randn(17, 8, device=DEV), torch.randn(4, 8, device=DEV))
    with pytest.raises(ValueError, match="features"):
        gemv(x, torch.randn(4, 9, device=DEV))
    with pytest.raises(TypeError):
        gemv(x, torch.randn(4, 8, device=DEV, dtype=torch.float16))
    with pytest.raises(ValueError, match="bias"):
        gemv(x, torch.randn(4, 8, device=DEV), torch.randn(5, device=DEV))


def test_decode_gemv_method_routes_by_rows_and_weight():
    """The GPU runner's linear method (backends/cuda/linear.py): gemv for decode-sized
    half-precision inputs, F.linear (bit-exact) for wider batches; fp32 and oversized
    weights keep their method."""
    from torch import nn

    from localserve.backends.cuda.linear import (
        MAX_GEMV_ROWS,
        DecodeGemvMethod,
        install_decode_gemv,
    )
    from localserve.layers.linear import Linear, UnquantizedMethod

    dtype = torch.float16
    model = nn.ModuleDict({"low": Linear(256, 96, bias=True), "fp32": Linear(256, 96)})
    for layer in model.values():
        nn.init.normal_(layer.weight, std=0.05)
        if layer.bias is not None:
            nn.init.normal_(layer.bias)
    model["low"].to(device=DEV, dtype=dtype)
    model["fp32"].to(device=DEV)
    assert install_decode_gemv(model) == 1
    assert type(model["low"].method) is DecodeGemvMethod
    assert type(model["fp32"].method) is UnquantizedMethod
    half = model["low"]
    for rows in (1, MAX_GEMV_ROWS, MAX_GEMV_ROWS + 1):
        x = torch.randn(rows, 256, device=DEV).to(dtype)
        with poisoned_outputs():
            out = half(x)
        ref = reference.linear(x, half.weight, half.bias)
        assert rel_error(out, ref) <= ELEMENTWISE_TOL[dtype]
        if rows > MAX_GEMV_ROWS:
            assert torch.equal(out, torch.nn.functional.linear(x, half.weight, half.bias))
