"""Gated activations of MLP blocks: act(x[..., :d]) * x[..., d:] (SwiGLU / GeGLU-tanh).

Reads the fused gate|up projection once and writes half as much; math in fp32.
`act_and_mul_q8` also writes the output rounded to int8 (quantize.py) for the int8 GGUF kernel
(the down projection), which would otherwise quantize it in a launch of its own.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from localserve.kernels.triton._common import (
    FLOAT_DTYPES,
    check_last_dim_contiguous,
    check_same_device,
    check_tensor,
    empty,
    next_pow2,
    pdl_launch,
    pdl_wait,
)
from localserve.kernels.triton.quantize import Q8, check_q8_rows, empty_q8, store_q8

ACTIVATIONS = {"silu": 0, "gelu_tanh": 1}


@triton.jit
def gated(gate, up, ACTIVATION: tl.constexpr):
    """act(gate) * up in fp32 (ACTIVATION: 0 = silu, 1 = gelu_tanh); shared with the gated
    GEMM's epilogue (gated_gemm.py)."""
    gate = gate.to(tl.float32)
    if ACTIVATION == 0:
        act = gate / (1.0 + tl.exp(-gate))
    else:
        inner = 0.7978845608028654 * (gate + 0.044715 * gate * gate * gate)  # sqrt(2/pi)
        # tanh(u) = 1 - 2 / (exp(2u) + 1): exact limits at +-inf, no libdevice needed.
        tanh = 1.0 - 2.0 / (tl.exp(2.0 * inner) + 1.0)
        act = 0.5 * gate * (1.0 + tanh)
    return act * up.to(tl.float32)


@triton.jit
def _act_and_mul_kernel(
    out_ptr,            # [num_rows, d] contiguous
    x_ptr,              # [num_rows, 2 * d], row stride stride_x
    q_ptr, d_ptr, s_ptr,  # out rounded to int8, quantize.py's layout (QUANTIZE)
    d, stride_x,
    ACTIVATION: tl.constexpr,   # 0 = silu, 1 = gelu_tanh
    BLOCK: tl.constexpr,
    QUANTIZE: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < d
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * stride_x + d + cols, mask=mask, other=0.0)
    y = gated(gate, up, ACTIVATION).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * d + cols, y, mask=mask)
    if QUANTIZE:  # the stored values, as quantize_q8 would read them back
        store_q8(tl.reshape(y.to(tl.float32), (BLOCK // 32, 32)), q_ptr, d_ptr, s_ptr, row,
                 tl.program_id(1) * (BLOCK // 32) + tl.arange(0, BLOCK // 32), d)


def act_and_mul(x: torch.Tensor, activation: str) -> torch.Tensor:
    """act(x[..., :d]) * x[..., d:] for x [..., 2d] -> [..., d] in x's dtype.

    activation: 'silu' or 'gelu_tanh'. x must be contiguous in its last dim; a 2-D x may
    have any row stride.
    """
    return _act_and_mul(x, activation, quantize=False)[0]


def act_and_mul_q8(x: torch.Tensor, activation: str) -> tuple[torch.Tensor, Q8]:
    """`act_and_mul`, and its output rounded to int8: (out, quantize_q8(out)), bit for bit, in
    one launch. x: [rows, 2d], d a multiple of 32."""
    check_tensor("x", x, ndim=2, dtypes=FLOAT_DTYPES)
    check_q8_rows("act_and_mul_q8", x.shape[1] // 2)
    out, q8 = _act_and_mul(x, activation, quantize=True)
    assert q8 is not None
    return out, q8


def _act_and_mul(x: torch.Tensor, activation: str, quantize: bool
                 ) -> tuple[torch.Tensor, Q8 | None]:
    check_tensor("x", x, dtypes=FLOAT_DTYPES)
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of "
                         f"{sorted(ACTIVATIONS)}")
    if x.dim() == 0 or x.shape[-1] % 2:
        raise ValueError(f"x's last dim must be even (gate | up), got shape {tuple(x.shape)}")
    check_same_device(x=x)
    check_last_dim_contiguous("x", x)
    d = x.shape[-1] // 2
    out = empty((*x.shape[:-1], d), x.dtype, x.device)
    q8 = empty_q8(x.shape[0], d, x.device) if quantize else None
    if out.numel() == 0:
        return out, q8
    rows = x if x.dim() == 2 else x.reshape(-1, 2 * d)  # [num_rows, 2d]
    # Quantizing programs hold whole 32-value blocks: d is then a multiple of 32, so is block.
    block = min(next_pow2(d), 2048)
    grid = (rows.shape[0], triton.cdiv(d, block))
    _act_and_mul_kernel[grid](
        out, rows, *(q8 or (out,) * 3), d, rows.stride(0),
        ACTIVATION=ACTIVATIONS[activation], BLOCK=block, QUANTIZE=quantize,
        num_warps=max(1, min(8, block // 256)), **pdl_launch(x.device),
    )
    return out, q8
