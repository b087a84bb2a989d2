"""gated_gemm (Triton, TMA) against kernels/reference.py's gated_linear (fp32 throughout,
one rounding at the end).

Interpreter (CPU) at small shapes without a GPU (fp16), Llama-3-8B and Qwen3-0.6B prefill
shapes on a Hopper GPU (bf16, fp16). Outputs start NaN. Tolerance: relative to max
|reference|, the dtype's rounding (ELEMENTWISE_TOL); against the unfused engine path, which
rounds gate|up before the activation, twice that and more through the down projection.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from localserve.kernels import reference
from localserve.kernels.triton import gated_gemm
from localserve.kernels.triton._common import poisoned_outputs
from localserve.kernels.triton.testing import ELEMENTWISE_TOL, device, full_shapes, rel_error

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

FULL = full_shapes()
DEV = device()
HOPPER = FULL and torch.cuda.get_device_capability()[0] == 9
needs_hopper = pytest.mark.skipif(FULL and not HOPPER, reason="TMA tiles: Hopper (sm_90) only")
DTYPES = [torch.bfloat16, torch.float16] if FULL else [torch.float16]
# (M, N = intermediate, K = hidden): prefill chunks; partial row and column tiles.
SHAPES = ([(16384, 14336, 4096), (8200, 3072, 1024), (8192, 1000, 512)] if FULL
          else [(40, 40, 96), (130, 136, 64), (7, 8, 8)])


def _case(m: int, n: int, k: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(m, k, device=DEV).to(dtype)
    w = (torch.randn(2 * n, k, device=DEV) / k ** 0.5).to(dtype)
    return x, w


@needs_hopper
@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_matches_reference(m, n, k, dtype, activation, seed):
    x, w = _case(m, n, k, dtype)
    with poisoned_outputs():
        out = gated_gemm.gated_gemm(x, w, activation)
    ref = reference.gated_linear(x, w, activation)
    assert out.shape == (m, n) and out.dtype == dtype
    err = rel_error(out, ref)
    assert err <= ELEMENTWISE_TOL[dtype], f"relative error {err:.3g}"
    unfused = reference.act_and_mul(reference.linear(x, w), activation)
    assert rel_error(out, unfused) <= 2 * ELEMENTWISE_TOL[dtype]


def test_runs_only_where_it_was_measured_faster(monkeypatch):
    """Hopper (or the interpreter) and prefill-sized half-precision batches whose rows TMA
    can address; everything else keeps cuBLAS + act_and_mul."""
    rows = gated_gemm.MIN_ROWS
    x, w = torch.empty(rows, 64, dtype=torch.float16), torch.empty(256, 64, dtype=torch.float16)
    monkeypatch.setattr(gated_gemm, "interpreting", lambda: True)
    assert gated_gemm.gated_gemm_suits(x, w)
    assert not gated_gemm.gated_gemm_suits(x[:rows - 1], w)
    assert not gated_gemm.gated_gemm_suits(x.float(), w.float())
    assert not gated_gemm.gated_gemm_suits(torch.empty(rows, 68, dtype=torch.float16)[:, :60],
                                           torch.empty(256, 60, dtype=torch.float16))
    assert not gated_gemm.gated_gemm_suits(x, w[:255])
    assert not gated_gemm.gated_gemm_suits(torch.empty(rows * 64 + 1, dtype=torch.float16)[1:]
                                           .view(rows, 64), w)  # base not 16-byte aligned
    assert not gated_gemm.gated_gemm_suits(x, torch.empty(64, 256, dtype=torch.float16).T)
    monkeypatch.setattr(gated_gemm, "interpreting", lambda: False)
    assert not gated_gemm.gated_gemm_suits(x, w)  # CPU tensors, no interpreter


def test_gpu_generations():
    """On a GPU: sm_90 only (the tiles were timed on an H100; the others have not run them)."""
    assert gated_gemm.measured_on("sm_90")
    for arch in ("sm_89", "sm_120", "sm_100", "gfx942", "gfx1100", None):
        assert not gated_gemm.measured_on(arch), arch


def test_rejects_bad_input():
    x, w = _case(8, 16, 32, torch.float16)
    with pytest.raises(ValueError, match="activation"):
        gated_gemm.gated_gemm(x, w, "relu")
    with pytest.raises(ValueError, match="multiples of 8"):
        gated_gemm.gated_gemm(x, w[:, :24], "silu")
    with pytest.raises(TypeError):
        gated_gemm.gated_gemm(x.float(), w.float(), "silu")


@needs_hopper
def test_gated_mlp_uses_it_for_prefill_batches_only(monkeypatch):
    """GatedMLP through the cuda backend's GatedGemmMethod: the fused kernel from MIN_ROWS
    rows (equal to cuBLAS + act_and_mul up to rounding), the wrapped method and act_and_mul
    below, bit for bit."""
    from torch import nn

    from localserve.backends.cuda.linear import GatedGemmMethod, install_gated_gemm
    from localserve.kernels.triton import act_and_mul
    from localserve.layers.fusion import fuse_projections
    from localserve.layers.mlp import GatedMLP
    from localserve.layers.ops import LayerOps, install_layer_ops

    dtype = DTYPES[0]
    rows = 64 if not FULL else gated_gemm.MIN_ROWS
    monkeypatch.setattr(gated_gemm, "MIN_ROWS", rows)
    mlp = GatedMLP(64, 96, "silu")
    for p in mlp.parameters():
        nn.init.normal_(p, std=0.1)
    mlp.to(device=DEV, dtype=dtype)
    install_layer_ops(mlp, LayerOps(act_and_mul=act_and_mul))
    assert fuse_projections(mlp) == 1
    assert install_gated_gemm(mlp) == 1
    assert isinstance(mlp.gate_up_proj.method, GatedGemmMethod)
    w_gate_up, w_down = mlp.gate_up_proj.weight, mlp.down_proj.weight
    for m in (rows - 1, rows):
        x = torch.randn(m, 64, device=DEV).to(dtype)
        unfused = reference.linear(act_and_mul(torch.nn.functional.linear(x, w_gate_up),
                                               "silu"), w_down)
        out = mlp(x)
        if m < rows:
            assert torch.equal(out, torch.nn.functional.linear(
                act_and_mul(torch.nn.functional.linear(x, w_gate_up), "silu"), w_down))
        else:
            assert rel_error(out, unfused) <= 4 * ELEMENTWISE_TOL[dtype]
