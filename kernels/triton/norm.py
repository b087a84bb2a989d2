"""RMSNorm with the fused pre-norm residual add (one read of x and residual, fp32 math).

Rows may be 2-D or 3-D views (e.g. Qwen3's per-head q/k norm over a slice of a fused qkv
output, [num_tokens, num_heads, head_dim] with a token stride wider than the row), so the
kernel takes an outer and an inner row stride instead of forcing a copy.

`rms_norm_q8` also writes the output rounded to int8 (quantize.py) for the int8 GGUF kernel,
which would otherwise quantize it in a launch of its own.
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

# Rows up to this many elements are held in registers in one pass; longer rows loop twice.
MAX_FUSED_HIDDEN = 16384


@triton.jit
def _rms_norm_kernel(
    out_ptr,            # [num_rows, hidden] contiguous, x's dtype
    new_res_ptr,        # [num_rows, hidden] contiguous, x's dtype (HAS_RESIDUAL)
    x_ptr,              # rows of hidden, addressed by (row // inner, row % inner)
    res_ptr,            # same addressing as x (HAS_RESIDUAL)
    weight_ptr,         # [hidden]
    q_ptr, d_ptr, s_ptr,  # out rounded to int8, quantize.py's layout (QUANTIZE)
    hidden, inner, eps, weight_offset,
    stride_x_outer, stride_x_inner,
    stride_r_outer, stride_r_inner,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
    NUM_CHUNKS: tl.constexpr,
    QUANTIZE: tl.constexpr,     # one chunk only
    USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + (row // inner) * stride_x_outer + (row % inner) * stride_x_inner
    r_row = res_ptr + (row // inner) * stride_r_outer + (row % inner) * stride_r_inner
    out_row = out_ptr + row * hidden
    new_res_row = new_res_ptr + row * hidden
    offs = tl.arange(0, BLOCK)

    if NUM_CHUNKS == 1:
        mask = offs < hidden
        x = tl.load(x_row + offs, mask=mask, other=0.0)
        if HAS_RESIDUAL:
            r = tl.load(r_row + offs, mask=mask, other=0.0)
            # The sum is rounded to x's dtype before it is normalised, as the model would.
            x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
            tl.store(new_res_row + offs, x, mask=mask)
        xf = x.to(tl.float32)
        inv_rms = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / hidden + eps)
        w = tl.load(weight_ptr + offs, mask=mask, other=0.0).to(tl.float32) + weight_offset
        y = (xf * inv_rms * w).to(out_ptr.dtype.element_ty)
        tl.store(out_row + offs, y, mask=mask)
        if QUANTIZE:  # the stored values, as quantize_q8 would read them back
            store_q8(tl.reshape(y.to(tl.float32), (BLOCK // 32, 32)), q_ptr, d_ptr, s_ptr, row,
                     tl.arange(0, BLOCK // 32), hidden)
    else:
        # Pass 1: sum of squares (and the residual sum, stored for pass 2 to re-read).
        sq = tl.zeros([BLOCK], dtype=tl.float32)
        for c in range(NUM_CHUNKS):
            idx = c * BLOCK + offs
            mask = idx < hidden
            x = tl.load(x_row + idx, mask=mask, other=0.0)
            if HAS_RESIDUAL:
                r = tl.load(r_row + idx, mask=mask, other=0.0)
                x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
                tl.store(new_res_row + idx, x, mask=mask)
            xf = x.to(tl.float32)
            sq += xf * xf
        inv_rms = 1.0 / tl.sqrt(tl.sum(sq, axis=0) / hidden + eps)
        tl.debug_barrier()  # pass 2 re-reads the residual sums stored above
        for c in range(NUM_CHUNKS):
            idx = c * BLOCK + offs
            mask = idx < hidden
            if HAS_RESIDUAL:
                xf = tl.load(new_res_row + idx, mask=mask, other=0.0).to(tl.float32)
            else:
                xf = tl.load(x_row + idx, mask=mask, other=0.0).to(tl.float32)
            w = tl.load(weight_ptr + idx, mask=mask, other=0.0).to(tl.float32) + weight_offset
            tl.store(out_row + idx, (xf * inv_rms * w).to(out_ptr.dtype.element_ty), mask=mask)


def _rows_view(name: str, t: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
    """(tensor, inner, stride_outer, stride_inner): t's rows, addressed without a copy."""
    check_last_dim_contiguous(name, t)
    if t.dim() == 1:
        return t, 1, 0, 0
    if t.dim() == 2:
        return t, 1, t.stride(0), 0
    if t.dim() == 3:
        return t, t.shape[1], t.stride(0), t.stride(1)
    t = t.reshape(-1, t.shape[-1])  # copies only when the leading dims cannot be merged
    return t, 1, t.stride(0), 0


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None,
             weight_offset: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RMSNorm(x [+ residual]) * (weight_offset + weight) over the last dim; see the reference.

    Args:
        x: [..., hidden] fp16/bf16/fp32, contiguous in the last dim (any other strides).
        weight: [hidden], any float dtype.
        residual: like x (same shape), or None.
    Returns:
        (out, new_residual): out like x (new contiguous tensor); new_residual = x + residual
        in x's dtype (a new tensor), or None without a residual.
    """
    out, new_res, _ = _rms_norm(x, weight, eps, residual, weight_offset, quantize=False)
    return out, new_res


def rms_norm_q8(x: torch.Tensor, weight: torch.Tensor, eps: float,
                residual: torch.Tensor | None = None, weight_offset: float = 0.0
                ) -> tuple[torch.Tensor, torch.Tensor | None, Q8]:
    """`rms_norm`, and its output rounded to int8: (out, new_residual, quantize_q8(out)), bit
    for bit, in one launch. x: [rows, hidden], hidden a multiple of 32, at most
    MAX_FUSED_HIDDEN."""
    check_tensor("x", x, ndim=2, dtypes=FLOAT_DTYPES)
    check_q8_rows("rms_norm_q8", x.shape[1])
    if x.shape[1] > MAX_FUSED_HIDDEN:
        raise ValueError(f"rms_norm_q8 takes rows of at most {MAX_FUSED_HIDDEN} values; "
                         f"got {x.shape[1]}")
    out, new_res, q8 = _rms_norm(x, weight, eps, residual, weight_offset, quantize=True)
    assert q8 is not None
    return out, new_res, q8


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
              residual: torch.Tensor | None, weight_offset: float, quantize: bool
              ) -> tuple[torch.Tensor, torch.Tensor | None, Q8 | None]:
    check_tensor("x", x, dtypes=FLOAT_DTYPES)
    check_tensor("weight", weight, ndim=1, dtypes=FLOAT_DTYPES)
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension")
    hidden = x.shape[-1]
    if weight.shape[0] != hidden:
        raise ValueError(f"weight has {weight.shape[0]} elements, x's last dim is {hidden}")
    tensors = {"x": x, "weight": weight}
    if residual is not None:
        check_tensor("residual", residual, dtypes=FLOAT_DTYPES)
        if residual.shape != x.shape:
            raise ValueError(f"residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}")
        tensors["residual"] = residual
    check_same_device(**tensors)
    weight = weight.contiguous()

    out = empty(tuple(x.shape), x.dtype, x.device)
    new_res = empty(tuple(x.shape), x.dtype, x.device) if residual is not None else None
    num_rows = x.numel() // hidden if hidden else 0
    q8 = empty_q8(num_rows, hidden, x.device) if quantize else None
    if num_rows == 0:
        return out, new_res, q8
    xv, inner, sxo, sxi = _rows_view("x", x)
    if residual is not None:
        rv, r_inner, sro, sri = _rows_view("residual", residual)
        if r_inner != inner:  # different view kinds: give both the plain [rows, hidden] form
            xv, rv = x.reshape(-1, hidden), residual.reshape(-1, hidden)
            inner, sxo, sxi, sro, sri = 1, xv.stride(0), 0, rv.stride(0), 0
    else:
        rv, sro, sri = xv, 0, 0

    block = min(next_pow2(hidden), MAX_FUSED_HIDDEN)
    num_chunks = triton.cdiv(hidden, block)
    num_warps = max(1, min(16, block // 256))
    _rms_norm_kernel[(num_rows,)](
        out, new_res if new_res is not None else out, xv, rv, weight, *(q8 or (out,) * 3),
        hidden, inner, float(eps), float(weight_offset), sxo, sxi, sro, sri,
        HAS_RESIDUAL=residual is not None, BLOCK=block, NUM_CHUNKS=num_chunks,
        QUANTIZE=quantize, num_warps=num_warps, **pdl_launch(x.device),
    )
    return out, new_res, q8
