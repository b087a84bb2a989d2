"""Experiment: Q4_K repacked at load for a cheaper dequantization in batched steps.

`kernels/triton/gguf.py` reads the raw blocks and measured 4-19% of an H100's copy bandwidth
(session 20): per value it gathers bytes, computes indices and decodes scales. Here the blocks
are first repacked (once, on the GPU) into what a tile wants: the 4-bit codes as contiguous
bytes in ggml's order (a 64-value chunk is 32 bytes, low nibbles = its first 32 values, high
nibbles = the next 32), and each 32-value group's scale d * sc and offset dmin * m in fp32 (6
bits a value in all, against Q4_K's 4.5 and bf16's 16). A K-step of 64 then loads one
[BLOCK_N, 32] byte tile, splits it into two [BLOCK_N, 32] halves with one scale each, and
runs two K=32 dots: no gathers, no reshape. Same values as ggml (fp32 products, then rounded
to x's dtype). Timed by `gguf_gpu_bench.py --only repacked` (session 21, call 6: at 16 rows
1.25-1.95x faster than `gguf_matmul` on Llama-3-8B's Q4_K layers, 1.1-1.8x slower than bf16
cuBLAS; docs/benchmarks.md): the lead for batched GGUF steps, not used by the backend.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from localserve.kernels.triton._common import (  # (also fixes the interpreter on NumPy 2.4)
    FLOAT_DTYPES,
    check_last_dim_contiguous,
    check_tensor,
)


def repack_q4_k(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw Q4_K rows (uint8 [N, K / 256 * 144]) -> (codes uint8 [N, K / 2], scales and
    offsets fp32 [N, K / 32]), with W = scale * code - offset per 32-value group."""
    n = raw.shape[0]
    blocks = raw.view(n, -1, 144)
    d = blocks[..., 0:2].contiguous().view(torch.float16).float()       # [N, S, 1]
    dmin = blocks[..., 2:4].contiguous().view(torch.float16).float()
    s = blocks[..., 4:16].int()                                           # [N, S, 12]
    low, high = s[..., 0:4], s[..., 4:8]
    top = s[..., 8:12]
    sc = torch.cat([low & 63, (top & 15) | ((low >> 6) << 4)], dim=-1)   # sub-blocks 0..7
    m = torch.cat([high & 63, (top >> 4) | ((high >> 6) << 4)], dim=-1)
    scales = (d * sc.float()).reshape(n, -1)
    offsets = (dmin * m.float()).reshape(n, -1)
    codes = blocks[..., 16:].reshape(n, -1).contiguous()
    return codes, scales.contiguous(), offsets.contiguous()


@triton.jit
def _repacked_kernel(x_ptr, q_ptr, s_ptr, z_ptr, out_ptr, M, N, K, stride_xm, stride_om,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    ms = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = ms < M
    lane = tl.arange(0, 32)
    q_rows = q_ptr + rows.to(tl.int64)[:, None] * (K // 2) + lane[None, :]
    g_rows = rows.to(tl.int64) * (K // 32)
    x_rows = x_ptr + ms.to(tl.int64)[:, None] * stride_xm + lane[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for step in range(0, K // 64):
        q = tl.load(q_rows + 32 * step, mask=row_ok[:, None], other=0).to(tl.int32)
        s_lo = tl.load(s_ptr + g_rows + 2 * step, mask=row_ok, other=0.0)
        s_hi = tl.load(s_ptr + g_rows + 2 * step + 1, mask=row_ok, other=0.0)
        z_lo = tl.load(z_ptr + g_rows + 2 * step, mask=row_ok, other=0.0)
        z_hi = tl.load(z_ptr + g_rows + 2 * step + 1, mask=row_ok, other=0.0)
        x_lo = tl.load(x_rows + 64 * step, mask=m_ok[:, None], other=0.0)
        x_hi = tl.load(x_rows + 64 * step + 32, mask=m_ok[:, None], other=0.0)
        w_lo = s_lo[:, None] * (q & 15).to(tl.float32) - z_lo[:, None]
        w_hi = s_hi[:, None] * (q >> 4).to(tl.float32) - z_hi[:, None]
        acc = tl.dot(x_lo, tl.trans(w_lo.to(x_lo.dtype)), acc, input_precision=PRECISION)
        acc = tl.dot(x_hi, tl.trans(w_hi.to(x_hi.dtype)), acc, input_precision=PRECISION)
    out = out_ptr + ms.to(tl.int64)[:, None] * stride_om + rows[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & row_ok[None, :])


def repacked_matmul(x: torch.Tensor, packed: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                    block_n: int = 32) -> torch.Tensor:
    """x [M, K] (contiguous rows) @ W^T for W repacked by `repack_q4_k`."""
    codes, scales, offsets = packed
    check_tensor("x", x, ndim=2, dtypes=FLOAT_DTYPES)
    check_last_dim_contiguous("x", x)
    (m, k), n = x.shape, codes.shape[0]
    if k % 256 or codes.shape[1] != k // 2:
        raise ValueError(f"codes {tuple(codes.shape)} do not hold Q4_K rows of {k} values")
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    block_m = 16 if m <= 16 else 32
    _repacked_kernel[(triton.cdiv(n, block_n), triton.cdiv(m, block_m))](
        x, codes, scales, offsets, out, m, n, k, x.stride(0), out.stride(0),
        BLOCK_M=block_m, BLOCK_N=block_n,
        PRECISION="ieee" if x.dtype == torch.float32 else None, num_warps=4, num_stages=3)
    return out
