"""The MLP's gate/up GEMM with the gated activation in its epilogue, for prefill-sized batches
on Hopper: act(x @ gate^T) * (x @ up^T) without writing gate|up to memory.

In a 16,384-token prefill chunk of Llama-3-8B, cuBLAS writes the [16384, 28672] gate|up
output (940 MB a layer) and act_and_mul reads it back and writes half of it; on an H100 that
runs at its power cap there, the pair took 5.82 ms a layer against 5.47 ms for this kernel
(`benchmarks/triton_kernels.py --only gated_gemm`, docs/benchmarks.md, session 10). Each
program keeps a tile's gate and up columns in two fp32 accumulators and stores act(gate) * up.
Operands move through tensor descriptors (TMA bulk copies): with pointer loads the best tile
ran 15% slower than cuBLAS + act_and_mul. Hence Hopper (sm_90) only, and batches of at least
MIN_ROWS rows (at 4,096 rows it was 3% faster and 8% slower than cuBLAS + act_and_mul in two
runs; smaller batches keep those). End to end on the H100: (c) +0.3% on the means of five
pairs, within its spread; (b) +0.2% (session 10).

The fused weight is [gate; up] (`layers.fusion`'s gate_up_proj): a program reads gate rows
[n, n + BLOCK_N) and up rows [N + n, N + n + BLOCK_N), so the weight needs no repacking.
Checked at full shapes on the GPU (tests/kernels/test_triton_gated_gemm.py) and in the
interpreter; test_triton_compile.py's cross-compilation does not take tensor descriptors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from localserve.kernels.triton._common import (
    check_same_device,
    check_tensor,
    empty,
    gpu_arch,
    interpreting,
    nvidia_capability,
)
from localserve.kernels.triton.activation import ACTIVATIONS, gated

MIN_ROWS = 8192
# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages): the fastest of eight on the H100 at both Llama
# shapes and Qwen3-0.6B's (triton_gated_gemm_bench.py); BLOCK_N columns of gate and of up.
TILES = (128, 128, 64, 8, 4)
GROUP_M = 8  # row blocks that take each column block in turn while its weights sit in L2


@triton.jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(row block, column block) of program pid in grouped order."""
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_m = min(tl.cdiv(M, BLOCK_M) - first_m, GROUP_M)
    return first_m + (pid % per_group) % group_m, (pid % per_group) // group_m


@triton.jit(do_not_specialize=["M"])  # prefill batches of every length share one build
def _gated_gemm_kernel(
    out_desc,           # [M, N] descriptor
    x_desc,             # [M, K] descriptor
    w_desc,             # [2N, K] descriptor: gate rows, then up rows
    M, N,
    K: tl.constexpr,    # the hidden size (a runtime K reaches the interpreter as an array)
    ACTIVATION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    off_m = pid_m * BLOCK_M
    off_n = pid_n * BLOCK_N
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        x = x_desc.load([off_m, k0])
        # A last, partial gate tile reads up rows: they only feed columns >= N, which the
        # store drops. Up rows past 2N read as zeros.
        g = w_desc.load([off_n, k0])
        u = w_desc.load([N + off_n, k0])
        acc_g = tl.dot(x, g.T, acc_g)
        acc_u = tl.dot(x, u.T, acc_u)
    out_desc.store([off_m, off_n], gated(acc_g, acc_u, ACTIVATION).to(out_desc.dtype))


def _tma_layout(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """x [M, K] and weight [2N, K] as tensor descriptors take them without a copy: K and N
    multiples of 8, x's rows and both bases 16-byte aligned, the weight contiguous."""
    if x.dim() != 2 or weight.dim() != 2 or weight.shape[1] != x.shape[1]:
        return False
    return (weight.shape[0] % 16 == 0 and x.shape[1] % 8 == 0 and x.stride(1) == 1
            and x.stride(0) % 8 == 0 and x.data_ptr() % 16 == 0 and weight.data_ptr() % 16 == 0
            and weight.is_contiguous())


def gated_gemm_suits(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether gated_gemm runs this product here: a Hopper GPU (or the interpreter), a
    prefill-sized half-precision batch, operands laid out as TMA takes them."""
    if x.dim() != 2 or x.shape[0] < MIN_ROWS or x.dtype not in (torch.float16, torch.bfloat16):
        return False
    if weight.dtype != x.dtype or not _tma_layout(x, weight):
        return False
    if interpreting():
        return True
    return x.is_cuda and measured_on(gpu_arch(x.device))


def measured_on(arch: str | None) -> bool:
    """Hopper (sm_90) only: the tiles were timed on an H100; Blackwell also has TMA but has
    not run them, and AMD and older NVIDIA GPUs have no TMA."""
    return nvidia_capability(arch) == (9, 0)


def gated_gemm(x: torch.Tensor, weight: torch.Tensor, activation: str,
               tiles: tuple[int, int, int, int, int] = TILES) -> torch.Tensor:
    """act(x @ weight[:N]^T) * (x @ weight[N:]^T) -> [M, N] in x's dtype, fp32 accumulation,
    for weight = [gate; up] of shape [2N, K]. What `act_and_mul(F.linear(x, weight),
    activation)` computes, without the [M, 2N] intermediate; see gated_gemm_suits for where
    it runs. `tiles`: (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages), for benchmarks."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    check_tensor("x", x, ndim=2, dtypes=(torch.float16, torch.bfloat16))
    check_tensor("weight", weight, ndim=2, dtypes=(x.dtype,))
    check_same_device(x=x, weight=weight)
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of "
                         f"{sorted(ACTIVATIONS)}")
    if not _tma_layout(x, weight):
        raise ValueError(f"gated_gemm needs a contiguous weight [2N, K] for x [M, K] with K and "
                         f"N multiples of 8 and rows and bases 16-byte aligned; got x "
                         f"{tuple(x.shape)} (strides {x.stride()}), weight {tuple(weight.shape)}"
                         f" (strides {weight.stride()})")
    (m, k), n = x.shape, weight.shape[0] // 2
    out = empty((m, n), x.dtype, x.device)
    if m == 0:
        return out
    bm, bn, bk, warps, stages = tiles
    # Keywords: the interpreter unpacks each descriptor into several arguments.
    _gated_gemm_kernel[(triton.cdiv(m, bm) * triton.cdiv(n, bn),)](
        out_desc=TensorDescriptor.from_tensor(out, [bm, bn]),
        x_desc=TensorDescriptor.from_tensor(x, [bm, bk]),
        w_desc=TensorDescriptor.from_tensor(weight, [bn, bk]),
        M=m, N=n, K=k, ACTIVATION=ACTIVATIONS[activation], BLOCK_M=bm, BLOCK_N=bn,
        BLOCK_K=bk, GROUP_M=GROUP_M, num_warps=warps, num_stages=stages,
    )
    return out
