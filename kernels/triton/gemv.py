"""Skinny matmul for decode: y[M, N] = x[M, K] @ W[N, K]^T (+ bias) for a few rows M.

At decode a linear layer streams its whole weight to produce a handful of rows, so its speed
is the fraction of memory bandwidth it reaches. cuBLAS tiles for wide GEMMs; on some decode
shapes its choice leaves SMs idle (a 4096 x 4096 projection at M = 1 runs 64 tiles on an
H100's 132 SMs). Here each program owns BLOCK_N output columns for all M rows and streams
its [BLOCK_N, K] slice of W exactly once: N / BLOCK_N programs, whatever M is. Rows are
padded to the 16 that `tl.dot` needs; the products are free next to the weight traffic.
Launched with programmatic dependent launch (opt-in, `_common.pdl_launch`), each program
loads its first weight tile before it waits for the kernel that writes x.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from localserve.kernels.triton._common import (
    FLOAT_DTYPES,
    check_last_dim_contiguous,
    check_same_device,
    check_tensor,
    empty,
    gpu_arch,
    nvidia_capability,
    pdl_launch,
    pdl_wait,
    rdna,
    shared_memory_limit,
)

MAX_ROWS = 16  # one tl.dot tile of rows; larger M is a GEMM, not a GEMV


@dataclass(frozen=True)
class GemvConfig:
    block_n: int = 32
    block_k: int = 256
    num_warps: int = 4
    num_stages: int = 4
    # Load the first weight tile before waiting for the previous kernel: under programmatic
    # dependent launch the weight stream then starts while that kernel still runs (weights
    # are no kernel's output). None: whenever the launch uses PDL.
    weights_first: bool | None = None


# 256-wide K tiles spill on Turing (sm_75: no asynchronous copies, 16x8x8 MMAs; 2 KB a thread in
# half precision) and on RDNA Radeons (gfx11xx: up to 1,700 VGPRs); 64 fits both
# (test_triton_compile.py compiles every launch for those targets).
SMALL_K_CONFIG = GemvConfig(block_k=64)


def default_config(x: torch.Tensor) -> GemvConfig:
    """The tiles for x's GPU generation, with as many pipeline stages as its shared memory
    holds: each stage past the first buffers a [BLOCK_N + 16, BLOCK_K] tile of W and x (24 KB
    in bf16, 48 KB in fp32), and AMD's 64 KB LDS (or an RTX 40xx's 99 KB in fp32) cannot hold
    the 3 buffers of 4 stages that an H100's 227 KB can."""
    return _config_for(gpu_arch(x.device), x.dtype, shared_memory_limit(x.device))


@functools.cache  # eager decode calls the gemv per layer per step
def _config_for(arch: str | None, dtype: torch.dtype, shared_bytes: int) -> GemvConfig:
    capability = nvidia_capability(arch)
    cfg = GemvConfig()
    if rdna(arch) or (capability is not None and capability < (8, 0)
                      and dtype != torch.float32):
        cfg = SMALL_K_CONFIG
    stage_bytes = (cfg.block_n + MAX_ROWS) * cfg.block_k * dtype.itemsize
    stages = min(cfg.num_stages, 1 + shared_bytes // stage_bytes)
    return cfg if stages == cfg.num_stages else replace(cfg, num_stages=max(1, stages))


@triton.jit
def _load_tile(rows, k, row_ok, K, EVEN_K: tl.constexpr):
    """[rows, BLOCK_K] elements at columns k of the row pointers `rows` (0 outside)."""
    if EVEN_K:
        return tl.load(rows + k[None, :], mask=row_ok[:, None], other=0.0)
    return tl.load(rows + k[None, :], mask=row_ok[:, None] & (k < K)[None, :], other=0.0)


# M (the decode batch) is not specialised: M == 1 would be its own variant, compiled the first
# time a single sequence decodes (seen inside a timed H200 run).
@triton.jit(do_not_specialize=["M"])
def _gemv_kernel(
    y_ptr,              # [M, N], row stride stride_ym
    x_ptr,              # [M, K], row stride stride_xm
    w_ptr,              # [N, K], row stride stride_wn
    b_ptr,              # [N] (HAS_BIAS)
    M, N, K,
    stride_ym, stride_xm, stride_wn,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    WEIGHTS_FIRST: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    n_ok = offs_n < N
    m_ok = offs_m < M
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn      # [BLOCK_N, 1]
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm      # [BLOCK_M, 1]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    k_start = 0
    if WEIGHTS_FIRST:  # the first tile's weights before the wait, its x after
        w = _load_tile(w_rows, offs_k, n_ok, K, EVEN_K)
        pdl_wait(USE_PDL)
        x = _load_tile(x_rows, offs_k, m_ok, K, EVEN_K)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=DOT_PRECISION)
        k_start = BLOCK_K
    else:
        pdl_wait(USE_PDL)
    for k0 in range(k_start, K, BLOCK_K):
        k = k0 + offs_k
        w = _load_tile(w_rows, k, n_ok, K, EVEN_K)
        x = _load_tile(x_rows, k, m_ok, K, EVEN_K)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :],
             acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def check_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                 ) -> tuple[int, int, int]:
    """(M, K, N) of x [M, K] @ weight [N, K]^T (+ bias [N]), after checking F.linear's
    contract for 2-D x: one float dtype, one device, contiguous in K (the one-row gemv,
    vector_gemv.py, checks its arguments here too)."""
    check_tensor("x", x, ndim=2, dtypes=FLOAT_DTYPES)
    check_tensor("weight", weight, ndim=2, dtypes=(x.dtype,))
    tensors = {"x": x, "weight": weight}
    if bias is not None:
        check_tensor("bias", bias, ndim=1, dtypes=FLOAT_DTYPES)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias has {bias.shape[0]} entries for {weight.shape[0]} outputs")
        tensors["bias"] = bias
    check_same_device(**tensors)
    check_last_dim_contiguous("x", x)
    check_last_dim_contiguous("weight", weight)
    (m, k), n = x.shape, weight.shape[0]
    if weight.shape[1] != k:
        raise ValueError(f"x has {k} features, weight {tuple(weight.shape)} expects "
                         f"{weight.shape[1]}")
    return m, k, n


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
         config: GemvConfig | None = None) -> torch.Tensor:
    """x [M, K] @ weight[N, K]^T (+ bias [N]) -> [M, N] in x's dtype, fp32 accumulation.

    M <= 16 (decode batches); x and weight of one float dtype and contiguous in K; any row
    strides. Same contract as F.linear for 2-D x.
    """
    m, k, n = check_linear(x, weight, bias)
    if m > MAX_ROWS:
        raise ValueError(f"gemv takes at most {MAX_ROWS} rows, got {m}: use a GEMM")
    cfg = config or default_config(x)
    pdl = pdl_launch(x.device)
    weights_first = pdl["USE_PDL"] if cfg.weights_first is None else cfg.weights_first
    y = empty((m, n), x.dtype, x.device)
    if m == 0 or n == 0:
        return y
    if k == 0:
        return y.zero_() if bias is None else y.copy_(bias.expand(m, n))
    _gemv_kernel[(triton.cdiv(n, cfg.block_n),)](
        y, x, weight, bias if bias is not None else y, m, n, k,
        y.stride(0), x.stride(0), weight.stride(0),
        HAS_BIAS=bias is not None, BLOCK_M=MAX_ROWS, BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k, EVEN_K=k % cfg.block_k == 0,
        # fp32 inputs: exact products (no TF32), as F.linear computes them.
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else None,
        WEIGHTS_FIRST=weights_first, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        **pdl,
    )
    return y
