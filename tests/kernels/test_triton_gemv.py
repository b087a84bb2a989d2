"""gemv (Triton) against kernels/reference.py's fp32 linear: decode-sized rows M <= 16; and
gemv_add_norm against the reference linear followed by the reference rms_norm with residual.

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
from localserve.kernels.triton.gemv import (
    MAX_NORM_WIDTH,
    SMALL_K_CONFIG,
    GemvConfig,
    arrival_counter,
    gemv,
    gemv_add_norm,
)
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


def _add_norm_case(m: int, n: int, k: int, dtype: torch.dtype):
    x = torch.randn(m, k, device=DEV).to(dtype)
    w = (torch.randn(n, k, device=DEV) / k ** 0.5).to(dtype)
    residual = torch.randn(m, n, device=DEV).to(dtype)
    norm_w = (torch.rand(n, device=DEV) + 0.5).to(dtype)
    return x, w, residual, norm_w


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("m", [1, 3, 8])
def test_add_norm_matches_reference(m, n, k, dtype, seed):
    """(normed, summed) as the reference computes them from the reference linear's output:
    within the dtype's rounding, for a bias and Gemma's weight offset too; the arrival
    counter is back at 0 after every launch, so calls in a row (a CUDA graph's replays) agree."""
    x, w, residual, norm_w = _add_norm_case(m, n, k, dtype)
    bias = torch.randn(n, device=DEV).to(dtype)
    arrived = arrival_counter(x.device)
    for b, offset in ((None, 0.0), (bias, 1.0)):
        ref_normed, ref_summed = reference.rms_norm(reference.linear(x, w, b), norm_w, 1e-6,
                                                    residual, offset)
        for _ in range(2):
            with poisoned_outputs():
                normed, summed = gemv_add_norm(x, w, residual, norm_w, 1e-6, arrived, b,
                                               offset)
            assert int(arrived.item()) == 0
            assert normed.shape == summed.shape == (m, n) and normed.dtype == dtype
            assert rel_error(summed, ref_summed) <= ELEMENTWISE_TOL[dtype]
            assert rel_error(normed, ref_normed) <= 2 * ELEMENTWISE_TOL[dtype]


def test_add_norm_rows_of_a_wider_residual_and_a_small_k_config(seed):
    """Row-strided x and residual (views into wider tensors), and tiles with K uneven."""
    dtype = DTYPES[0]
    n, k = SHAPES[-1]
    x = torch.randn(3, 2 * k, device=DEV).to(dtype)[:, k:]
    w = (torch.randn(n, k, device=DEV) / k ** 0.5).to(dtype)
    residual = torch.randn(3, 2 * n, device=DEV).to(dtype)[:, :n]
    norm_w = torch.rand(n, device=DEV) + 0.5
    ref_normed, ref_summed = reference.rms_norm(reference.linear(x, w), norm_w, 1e-5, residual)
    with poisoned_outputs():
        normed, summed = gemv_add_norm(x, w, residual, norm_w, 1e-5, arrival_counter(x.device),
                                       config=SMALL_K_CONFIG)
    assert rel_error(summed, ref_summed) <= ELEMENTWISE_TOL[dtype]
    assert rel_error(normed, ref_normed) <= 2 * ELEMENTWISE_TOL[dtype]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_add_norm_replays_in_a_cuda_graph(seed):
    """Replays with new inputs each time: the last program must see every other program's
    columns of this replay (a stale or early read shows up as a mismatch), and the counter
    must reset inside the graph."""
    x, w, residual, norm_w = _add_norm_case(1, 4096, 14336, torch.bfloat16)
    arrived = arrival_counter(x.device)
    gemv_add_norm(x, w, residual, norm_w, 1e-5, arrived)  # compile before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        normed, summed = gemv_add_norm(x, w, residual, norm_w, 1e-5, arrived)
    for _ in range(5):
        x.copy_(torch.randn_like(x))
        residual.copy_(torch.randn_like(residual))
        graph.replay()
        expected = gemv_add_norm(x, w, residual, norm_w, 1e-5, arrival_counter(x.device))
        torch.cuda.synchronize()
        assert torch.equal(normed, expected[0]) and torch.equal(summed, expected[1])
    assert int(arrived.item()) == 0


def test_add_norm_rejects_bad_input():
    x, w, residual, norm_w = _add_norm_case(2, 8, 16, torch.float32)
    arrived = arrival_counter(x.device)
    with pytest.raises(ValueError, match="must match the output"):
        gemv_add_norm(x, w, residual[:, :4], norm_w, 1e-6, arrived)
    with pytest.raises(ValueError, match="must match the output"):
        gemv_add_norm(x, w, residual, norm_w[:4], 1e-6, arrived)
    with pytest.raises(TypeError, match="arrived"):
        gemv_add_norm(x, w, residual, norm_w, 1e-6, arrived.float())
    wide = torch.randn(MAX_NORM_WIDTH + 1, 16, device=DEV)
    with pytest.raises(ValueError, match="at most"):
        gemv_add_norm(x, wide, torch.randn(2, MAX_NORM_WIDTH + 1, device=DEV),
                      torch.randn(MAX_NORM_WIDTH + 1, device=DEV), 1e-6, arrived)


def test_decode_gemv_method_fuses_the_norm_for_decode_rows_only():
    """RMSNorm.project_add_and_norm through the GPU runner's method: one fused launch for
    <= MAX_GEMV_ROWS rows (equal to the separate launches up to rounding), the separate
    F.linear + norm path (None from the method) beyond."""
    from torch import nn

    from localserve.backends.cuda.linear import MAX_GEMV_ROWS, install_decode_gemv
    from localserve.layers.linear import Linear
    from localserve.layers.norm import RMSNorm

    dtype = torch.float16
    proj, norm = Linear(256, 96), RMSNorm(96, 1e-6, offset=1.0)
    nn.init.normal_(proj.weight, std=0.05)
    nn.init.uniform_(norm.weight, -0.5, 0.5)
    proj.to(device=DEV, dtype=dtype)
    norm.to(device=DEV, dtype=dtype)
    assert install_decode_gemv(proj) == 1
    for rows in (1, MAX_GEMV_ROWS, MAX_GEMV_ROWS + 1):
        x = torch.randn(rows, 256, device=DEV).to(dtype)
        residual = torch.randn(rows, 96, device=DEV).to(dtype)
        fused = proj.method.apply_add_norm(proj, x, residual, norm)
        assert (fused is None) == (rows > MAX_GEMV_ROWS)
        normed, summed = norm.project_add_and_norm(proj, x, residual)
        ref_normed, ref_summed = reference.rms_norm(reference.linear(x, proj.weight),
                                                    norm.weight, 1e-6, residual, 1.0)
        assert rel_error(summed, ref_summed) <= ELEMENTWISE_TOL[dtype]
        assert rel_error(normed, ref_normed) <= 2 * ELEMENTWISE_TOL[dtype]
