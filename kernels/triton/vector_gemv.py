"""The one-row decode matmul: y = x @ W^T (+ bias) for x [1, K], with no `tl.dot`.

At batch-1 decode a linear layer streams its whole weight for one row, so only bandwidth
counts. With one row the products are an element-wise multiply of a weight tile by the input
vector and a sum along K, so there is nothing to pad to tensor-core tiles (the batched gemv,
gemv.py, pads the row to 16). Tiles of 8 output rows by up to 2,048 columns, 8 warps and no
software pipeline won the H100 sweep (session 12, docs/benchmarks.md): each thread keeps
eight 16-byte weight loads in flight per tile. It beat cuBLAS and the batched gemv on every
Llama-3-8B shape; (a) went from 172.0 to 185.0 tok/s. Folding the RMSNorm before a
projection, or the activation before the down projection, into this kernel was slower
(same section; code in commit 63ccb50).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from localserve.kernels.triton._common import empty, pdl_launch, pdl_wait
from localserve.kernels.triton.gemv import check_linear


@dataclass(frozen=True)
class VectorGemvConfig:
    """Output rows and K columns a program's weight tile spans; warps; pipeline stages."""

    block_n: int = 8
    block_k: int = 2048
    num_warps: int = 8
    num_stages: int = 1


@functools.cache
def vector_config(n: int, k: int) -> VectorGemvConfig:
    """The tiles for an [n, k] weight, the H100 sweep's fastest (session 12): 8 x 2,048 of
    8 warps without a pipeline on all five Llama-3-8B shapes (within 0.1 us of 8 x 1,024
    of 4 warps on the gate_up); rows of at most 1,024 (Qwen3-0.6B's, Gemma 3 270M's):
    16 x 512 of 8 warps, 2 stages (4.8 us on Qwen3-0.6B's gate_up, 6.0-6.6 for the others)."""
    if k <= 1024:
        return VectorGemvConfig(block_n=16, block_k=512, num_warps=8, num_stages=2)
    return VectorGemvConfig()


@triton.jit
def _weight_tile(w_rows, k, n_ok, K):
    """The weight's columns k of this program's rows, as fp32 (0 outside)."""
    return tl.load(w_rows + k[None, :], mask=n_ok[:, None] & (k < K)[None, :],
                   other=0.0).to(tl.float32)


@triton.jit
def _vector_gemv_kernel(
    y_ptr,              # [N]
    x_ptr,              # [K]
    w_ptr,              # [N, K], row stride stride_wn
    b_ptr,              # [N] (HAS_BIAS)
    N, K, stride_wn,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    n_ok = offs_n < N
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn
    # The first weight tile is no kernel's output: it loads before the PDL wait, so the
    # stream starts while the kernel that writes x is finishing.
    w = _weight_tile(w_rows, offs_k, n_ok, K)
    pdl_wait(USE_PDL)
    acc = w * tl.load(x_ptr + offs_k, mask=offs_k < K, other=0.0).to(tl.float32)[None, :]
    for k0 in range(BLOCK_K, K, BLOCK_K):
        k = k0 + offs_k
        x = tl.load(x_ptr + k, mask=k < K, other=0.0).to(tl.float32)
        acc += _weight_tile(w_rows, k, n_ok, K) * x[None, :]
    y = tl.sum(acc, axis=1)
    if HAS_BIAS:
        y += tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=n_ok)


def vector_gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                config: VectorGemvConfig | None = None) -> torch.Tensor:
    """x [1, K] @ weight [N, K]^T (+ bias [N]) -> [1, N] in x's dtype, fp32 accumulation;
    the batched gemv's contract (`gemv.check_linear`) for one row."""
    m, k, n = check_linear(x, weight, bias)  # x contiguous in K: one row is then contiguous
    if m != 1:
        raise ValueError(f"x must be one row [1, features], got shape {tuple(x.shape)}")
    y = empty((1, n), x.dtype, x.device)
    if n == 0:
        return y
    if k == 0:
        return y.zero_() if bias is None else y.copy_(bias.expand(1, n))
    cfg = config or vector_config(n, k)
    _vector_gemv_kernel[(triton.cdiv(n, cfg.block_n),)](
        y, x, weight, bias if bias is not None else y, n, k, weight.stride(0),
        HAS_BIAS=bias is not None, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **pdl_launch(x.device),
    )
    return y
