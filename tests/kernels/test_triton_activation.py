"""act_and_mul (Triton) against kernels/reference.py: SiLU and tanh-GELU gated products.

Interpreter (CPU) at small shapes without a GPU (fp32, fp16), model-sized shapes on one.
Outputs start NaN.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from localserve.kernels import reference
from localserve.kernels.triton import act_and_mul
from localserve.kernels.triton._common import poisoned_outputs
from localserve.kernels.triton.activation import act_and_mul_q8
from localserve.kernels.triton.quantize import quantize_q8
from localserve.kernels.triton.testing import (
    ELEMENTWISE_TOL,
    device,
    full_shapes,
    rel_error,
)

# The interpreter evaluates exp() in NumPy, which warns where it overflows to inf (handled).
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

FULL = full_shapes()
DEV = device()
DTYPES = [torch.float16, torch.bfloat16] if FULL else [torch.float32, torch.float16]
# d = intermediate size: Llama-3-8B, Qwen3-0.6B, a non-power-of-two, one past a program's block.
SIZES = [14336, 3072, 8960, 2049] if FULL else [64, 300, 2049]


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", SIZES)
def test_matches_reference(activation, dtype, d, seed):
    num_tokens = 1024 if FULL else 3
    # Wide range, so both tails (saturation, exp overflow) are exercised.
    x = (torch.randn(num_tokens, 2 * d, device=DEV) * 6).to(dtype)
    ref = reference.act_and_mul(x, activation)
    with poisoned_outputs():
        out = act_and_mul(x, activation)
    assert out.shape == ref.shape and out.dtype == dtype
    err = rel_error(out, ref)
    assert err <= ELEMENTWISE_TOL[dtype], f"relative error {err:.3g}"


def test_extreme_values_stay_finite():
    x = torch.tensor([[-1e4, -100.0, 0.0, 100.0, 1e4, 1.0, 1.0, 1.0, 1.0, 1.0]], device=DEV)
    for activation in ("silu", "gelu_tanh"):
        out = act_and_mul(x, activation)
        ref = reference.act_and_mul(x, activation)
        assert torch.isfinite(out).all()
        assert rel_error(out, ref) <= 1e-6


def test_leading_dims_and_row_stride(seed):
    x = torch.randn(2, 3, 128, device=DEV).to(DTYPES[0])
    tol = ELEMENTWISE_TOL[DTYPES[0]]
    assert rel_error(act_and_mul(x, "silu"), reference.act_and_mul(x, "silu")) <= tol
    wide = torch.randn(4, 200, device=DEV).to(DTYPES[0])[:, :128]  # row stride 200
    ref = reference.act_and_mul(wide, "gelu_tanh")
    assert rel_error(act_and_mul(wide, "gelu_tanh"), ref) <= tol
    assert act_and_mul(x[:0], "silu").shape == (0, 3, 64)


def test_input_errors():
    x = torch.randn(2, 64, device=DEV)
    with pytest.raises(ValueError, match="unknown activation"):
        act_and_mul(x, "relu")
    with pytest.raises(ValueError, match="must be even"):
        act_and_mul(x[:, :63], "silu")
    with pytest.raises(TypeError, match="x must have dtype"):
        act_and_mul(x.double(), "silu")


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", [14336, 3072, 2080] if FULL else [64, 96, 2080])
def test_q8_is_the_activation_then_quantize_q8_bit_for_bit(activation, dtype, d, seed):
    """act_and_mul_q8 (for the int8 GGUF kernel) = act_and_mul, then quantize_q8 of its
    output: each program quantizes its own columns (2080: two programs, the second mostly
    past d)."""
    x = (torch.randn(3, 2 * d, device=DEV) * 6).to(dtype)
    want = act_and_mul(x, activation)
    with poisoned_outputs():
        out, q8 = act_and_mul_q8(x, activation)
    assert torch.equal(out, want)
    for got, ref in zip(q8, quantize_q8(want), strict=True):
        assert torch.equal(got, ref)


def test_q8_input_errors():
    with pytest.raises(ValueError, match="multiple of 32 values"):
        act_and_mul_q8(torch.randn(2, 96, device=DEV), "silu")
    with pytest.raises(ValueError, match="x must have 2 dim"):
        act_and_mul_q8(torch.randn(2, 2, 128, device=DEV), "silu")
