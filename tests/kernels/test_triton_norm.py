"""rms_norm (Triton) against kernels/reference.py, with and without the fused residual add.

Interpreter (CPU) at small shapes without a GPU (fp32, fp16: the interpreter rounds bf16 by
truncation, so bf16 is checked on the GPU only), model-sized shapes on one. Outputs start NaN.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from localserve.kernels import reference
from localserve.kernels.triton import rms_norm
from localserve.kernels.triton._common import poisoned_outputs
from localserve.kernels.triton.norm import MAX_FUSED_HIDDEN, rms_norm_q8
from localserve.kernels.triton.quantize import quantize_q8
from localserve.kernels.triton.testing import (
    ELEMENTWISE_TOL,
    device,
    full_shapes,
    rel_error,
)

FULL = full_shapes()
DEV = device()
DTYPES = [torch.float16, torch.bfloat16] if FULL else [torch.float32, torch.float16]
# A row longer than MAX_FUSED_HIDDEN takes the two-pass loop.
HIDDEN = [1024, 4096, 5120, 3 * MAX_FUSED_HIDDEN // 2] if FULL else [64, 100, MAX_FUSED_HIDDEN + 8]


def _compare(x, weight, eps, residual, weight_offset):
    ref_out, ref_res = reference.rms_norm(x, weight, eps, residual, weight_offset)
    with poisoned_outputs():
        out, new_res = rms_norm(x, weight, eps, residual, weight_offset)
    assert out.shape == x.shape and out.dtype == x.dtype
    err = rel_error(out, ref_out)
    assert err <= ELEMENTWISE_TOL[x.dtype], f"relative error {err:.3g}"
    if residual is None:
        assert new_res is None
    else:
        # x + residual rounded to x's dtype: exact up to one rounding of the fp32 sum.
        assert new_res.dtype == x.dtype and new_res.shape == x.shape
        res_err = rel_error(new_res, ref_res)
        assert res_err <= ELEMENTWISE_TOL[x.dtype], f"residual relative error {res_err:.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("with_residual", [False, True])
def test_matches_reference(dtype, hidden, with_residual, seed):
    num_rows = 512 if FULL else 5
    x = (torch.randn(num_rows, hidden, device=DEV) * 3).to(dtype)
    weight = torch.randn(hidden, device=DEV).to(dtype)
    residual = torch.randn(num_rows, hidden, device=DEV).to(dtype) if with_residual else None
    _compare(x, weight, 1e-6, residual, 0.0)


def test_gemma_weight_offset_and_fp32_weight(seed):
    x = torch.randn(7, 256, device=DEV).to(DTYPES[-1])
    weight = torch.randn(256, device=DEV) * 0.1  # fp32 weight with fp16/bf16 activations
    residual = torch.randn(7, 256, device=DEV).to(DTYPES[-1])
    _compare(x, weight, 1e-5, residual, 1.0)


def test_per_head_norm_on_strided_view(seed):
    """Qwen3's q/k norm: [tokens, heads, head_dim] sliced out of a fused qkv output, no copy."""
    num_tokens = 300 if FULL else 6
    qkv = torch.randn(num_tokens, 16 + 2 * 8, 128, device=DEV).to(DTYPES[0])
    q = qkv[:, :16]
    assert not q.is_contiguous()
    weight = torch.randn(128, device=DEV).to(DTYPES[0])
    _compare(q, weight, 1e-6, None, 0.0)
    _compare(qkv[:, 16:24], weight, 1e-6, torch.randn_like(qkv[:, 16:24]), 0.0)


def test_leading_dims_and_empty(seed):
    x = torch.randn(2, 3, 4, 64, device=DEV).to(DTYPES[0])
    _compare(x, torch.randn(64, device=DEV), 1e-6, torch.randn_like(x), 0.0)
    out, res = rms_norm(x[:0], torch.ones(64, device=DEV), 1e-6)
    assert out.shape == (0, 3, 4, 64) and res is None


def test_input_errors():
    x = torch.randn(4, 64, device=DEV)
    with pytest.raises(ValueError, match="weight has 32 elements"):
        rms_norm(x, torch.ones(32, device=DEV), 1e-6)
    with pytest.raises(ValueError, match="residual shape"):
        rms_norm(x, torch.ones(64, device=DEV), 1e-6, residual=x[:2])
    with pytest.raises(TypeError, match="x must have dtype"):
        rms_norm(x.double(), torch.ones(64, device=DEV), 1e-6)
    with pytest.raises(ValueError, match="contiguous in its last dimension"):
        rms_norm(torch.randn(64, 4, device=DEV).t(), torch.ones(64, device=DEV), 1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", [4096, 640, 1120] if FULL else [64, 96])
@pytest.mark.parametrize("with_residual", [False, True])
def test_q8_is_the_norm_then_quantize_q8_bit_for_bit(dtype, hidden, with_residual, seed):
    """rms_norm_q8 (for the int8 GGUF kernel) = rms_norm, then quantize_q8 of its output;
    hidden not a power of two leaves blocks of the row's tile unstored."""
    x = (torch.randn(5, hidden, device=DEV) * 3).to(dtype)
    weight = torch.randn(hidden, device=DEV).to(dtype)
    residual = torch.randn(5, hidden, device=DEV).to(dtype) if with_residual else None
    want_out, want_res = rms_norm(x, weight, 1e-6, residual, 1.0)
    with poisoned_outputs():
        out, new_res, q8 = rms_norm_q8(x, weight, 1e-6, residual, 1.0)
    assert torch.equal(out, want_out)
    assert (new_res is None) if residual is None else torch.equal(new_res, want_res)
    for got, want in zip(q8, quantize_q8(want_out), strict=True):
        assert torch.equal(got, want)


def test_q8_input_errors():
    x = torch.randn(4, 64, device=DEV)
    with pytest.raises(ValueError, match="multiple of 32 values"):
        rms_norm_q8(x[:, :48], torch.ones(48, device=DEV), 1e-6)
    with pytest.raises(ValueError, match=f"at most {MAX_FUSED_HIDDEN} values"):
        rms_norm_q8(torch.randn(2, MAX_FUSED_HIDDEN + 32, device=DEV),
                    torch.ones(MAX_FUSED_HIDDEN + 32, device=DEV), 1e-6)
    with pytest.raises(ValueError, match="x must have 2 dim"):
        rms_norm_q8(x.reshape(2, 2, 64), torch.ones(64, device=DEV), 1e-6)
