"""x rounded to int8 for the int8 GGUF kernel (gguf_q8.py), as llama.cpp's q8_1 rounds it.

Blocks of 32 values of a row each become round-to-even(x * 127 / amax) in int8, one fp32 scale
d = amax / 127, and d times the block's int8 sum (`kernels.reference.quantize_q8`). The
standalone `quantize_q8` is one launch a matmul; `store_q8` lets a kernel that produces x
(RMSNorm, the gated activation) write its int8 form too, saving that launch: bit for bit the
same, since it quantizes the same values (its output, rounded to the output's dtype first).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from localserve.kernels.triton._common import (
    FLOAT_DTYPES,
    check_last_dim_contiguous,
    check_tensor,
    empty,
    pdl_launch,
    pdl_wait,
)

Q8 = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (int8 values, scales, scaled sums)
QK = 32  # values of x a scale
RNE = tl.constexpr(12582912.0)  # 1.5 * 2^23: (v + RNE) - RNE rounds |v| < 2^22 to even
QUANTIZE_BLOCKS = 32  # 32-value blocks a program of the standalone kernel


@triton.jit
def store_q8(x, q_ptr, d_ptr, s_ptr, row, block, K):
    """Quantizes x [B, 32] (fp32), blocks `block` [B] of one row of K values, into q [rows,
    K] int8, d and s [rows, K / 32] fp32; blocks at or past K / 32 are not stored."""
    ok = block < K // 32
    amax = tl.max(tl.abs(x), axis=1)
    inverse = tl.where(amax > 0, tl.math.div_rn(tl.full(amax.shape, 127.0, tl.float32),
                                                tl.maximum(amax, 1e-30)), 0.0)
    q = (x * inverse[:, None] + RNE) - RNE
    d = tl.math.div_rn(amax, tl.full(amax.shape, 127.0, tl.float32))
    cols = block[:, None] * 32 + tl.arange(0, 32)[None, :]
    tl.store(q_ptr + row * K + cols, q.to(tl.int8), mask=ok[:, None])
    tl.store(d_ptr + row * (K // 32) + block, d, mask=ok)
    tl.store(s_ptr + row * (K // 32) + block, d * tl.sum(q, axis=1), mask=ok)


@triton.jit
def _quantize_q8_kernel(x_ptr, q_ptr, d_ptr, s_ptr, K, stride_x, BLOCKS: tl.constexpr,
                        USE_PDL: tl.constexpr):
    """BLOCKS blocks of 32 values of one row of x."""
    row = tl.program_id(0)
    block = tl.program_id(1) * BLOCKS + tl.arange(0, BLOCKS)
    cols = block[:, None] * 32 + tl.arange(0, 32)[None, :]
    pdl_wait(USE_PDL)
    x = tl.load(x_ptr + row * stride_x + cols, mask=(block < K // 32)[:, None], other=0.0)
    store_q8(x.to(tl.float32), q_ptr, d_ptr, s_ptr, row, block, K)


def check_q8_rows(name: str, k: int) -> None:
    if k % QK:
        raise ValueError(f"{name} quantizes rows of a multiple of {QK} values to int8; "
                         f"got {k}")


def empty_q8(m: int, k: int, device: torch.device) -> Q8:
    """Uninitialised (q int8 [m, k], d fp32 [m, k / 32], s fp32 [m, k / 32])."""
    return (empty((m, k), torch.int8, device), empty((m, k // QK), torch.float32, device),
            empty((m, k // QK), torch.float32, device))


def check_q8(x_q8: Q8, m: int, k: int, device: torch.device) -> Q8:
    """x_q8, if it is the int8 form of an [m, k] x on `device` (`empty_q8`'s layout)."""
    want = [((m, k), torch.int8), ((m, k // QK), torch.float32), ((m, k // QK), torch.float32)]
    if len(x_q8) != 3 or [(tuple(t.shape), t.dtype) for t in x_q8] != want or any(
            t.device != device or not t.is_contiguous() for t in x_q8):
        raise ValueError(f"x_q8 must be contiguous (int8 [{m}, {k}], fp32 [{m}, {k // QK}], fp32 "
                         f"[{m}, {k // QK}]) on {device}, as quantize_q8 returns for x")
    return x_q8


def quantize_q8(x: torch.Tensor) -> Q8:
    """x [M, K] (K a multiple of 32) -> (int8 [M, K], scales fp32 [M, K/32], scaled sums fp32
    [M, K/32]): each block of 32 values as round-to-even(x * 127 / amax), amax / 127, and
    that scale times the block's int8 sum (kernels.reference.quantize_q8)."""
    check_tensor("x", x, ndim=2, dtypes=FLOAT_DTYPES)
    check_last_dim_contiguous("x", x)
    m, k = x.shape
    check_q8_rows("quantize_q8", k)
    q, d, s = empty_q8(m, k, x.device)
    if m and k:
        _quantize_q8_kernel[(m, triton.cdiv(k // QK, QUANTIZE_BLOCKS))](
            x, q, d, s, k, x.stride(0), BLOCKS=QUANTIZE_BLOCKS, num_warps=4,
            **pdl_launch(x.device))
    return q, d, s
