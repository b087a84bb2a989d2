"""The gated-GEMM section of benchmarks/triton_kernels.py (`--only gated_gemm`): can a Triton
GEMM that applies SiLU-and-mul in its epilogue replace cuBLAS + the activation kernel in (c)'s
prefill chunks? (Issue 6: probed in session 9; the TMA version became the engine's kernel in
session 10, kernels/triton/gated_gemm.py, which this section times at other tiles too.)

Why: in a 16,384-token prefill chunk of Llama-3-8B the MLP writes gate/up (940 MB a layer), and
SiLU-and-mul reads it back and writes 470 MB: ~0.5 ms a layer (an estimate: 126 us measured at
4,096 rows in session 3), on a GPU that runs at its power cap there (docs/benchmarks.md,
session 9). A GEMM that keeps each output tile's gate and up columns in two accumulators can
apply act(gate) * up before it stores, so neither the 940 MB nor the extra kernel exist. It
pays only if the GEMM keeps up with cuBLAS: the section times it, with pointer loads and with
tensor descriptors (TMA), against F.linear alone and F.linear + act_and_mul, after checking it
against the reference.

The fused weight is [gate; up] (`layers.fusion`'s gate_up_proj): a program reads gate rows
[n, n + BLOCK_N) and up rows [N + n, N + n + BLOCK_N), so the weight needs no repacking.
Imported only once triton_kernels.py has chosen the interpreter or the GPU (triton is imported
here at module level, for the kernels).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton_bench_core import Bench, Row  # this folder's module

from localserve.kernels.triton.activation import gated
from localserve.kernels.triton.gated_gemm import gated_gemm as engine_gated_gemm
from localserve.kernels.triton.gated_gemm import grouped_tile


@triton.jit
def gated_gemm_kernel(
    out_ptr,            # [M, N] silu(x @ gate^T) * (x @ up^T)
    x_ptr,              # [M, K]
    w_ptr,              # [2N, K]: gate rows, then up rows
    M, N, K,
    stride_om, stride_xm, stride_wn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < N
    x_ptrs = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + offs_k[None, :]
    g_ptrs = w_ptr + offs_n.to(tl.int64)[None, :] * stride_wn + offs_k[:, None]
    u_ptrs = g_ptrs + N * stride_wn
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + offs_k) < K
        x = tl.load(x_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        g = tl.load(g_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        u = tl.load(u_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc_g = tl.dot(x, g, acc_g)
        acc_u = tl.dot(x, u, acc_u)
        x_ptrs += BLOCK_K
        g_ptrs += BLOCK_K
        u_ptrs += BLOCK_K
    tl.store(out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :],
             gated(acc_g, acc_u, 0).to(out_ptr.dtype.element_ty),  # 0: SiLU
             mask=m_ok[:, None] & n_ok[None, :])


def gated_gemm(x: torch.Tensor, w: torch.Tensor, config: tuple[int, int, int, int, int],
               tma: bool = False) -> torch.Tensor:
    """silu(x @ gate^T) * (x @ up^T) for w = [gate; up]; config (BM, BN, BK, warps, stages);
    tma: the engine's kernel (kernels/triton/gated_gemm.py, operands through tensor
    descriptors), else this file's pointer-load version."""
    if tma:
        return engine_gated_gemm(x, w, "silu", config)
    m, k = x.shape
    n = w.shape[0] // 2
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    bm, bn, bk, warps, stages = config
    gated_gemm_kernel[(triton.cdiv(m, bm) * triton.cdiv(n, bn),)](
        out, x, w, m, n, k, out.stride(0), x.stride(0), w.stride(0), BLOCK_M=bm, BLOCK_N=bn,
        BLOCK_K=bk, GROUP_M=8, num_warps=warps, num_stages=stages)
    return out


class GatedGemmSection:
    """Adds the gated GEMM's rows to `b`: per shape, cuBLAS F.linear alone, cuBLAS +
    act_and_mul (the row to beat), then each tile config through pointers and through tensor
    descriptors."""

    def __init__(self, b: Bench) -> None:
        self.b = b

    def gated_gemm(self) -> None:
        print("gated_gemm", flush=True)
        b = self.b
        # (label, M, N = intermediate size, K = hidden size)
        shapes = ([("tiny", 40, 40, 96)] if b.smoke else
                  [("llama3-8b (c) chunk", 16384, 14336, 4096), ("llama3-8b", 4096, 14336, 4096),
                   ("llama3-8b (c) decode", 512, 14336, 4096),
                   ("qwen3-0.6b chunk", 16384, 3072, 1024)])
        # (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages); BLOCK_N per half: 2 x BLOCK_N columns
        configs = ([(16, 16, 32, 4, 1), (32, 16, 16, 4, 2)] if b.smoke else
                   [(128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 64, 64, 4, 4),
                    (128, 64, 64, 8, 4), (64, 128, 64, 4, 4), (256, 64, 64, 8, 3),
                    (128, 128, 32, 8, 4), (128, 256, 64, 8, 3)])
        # Half precision even under --smoke: the engine's kernel takes nothing else.
        dtype = torch.float16 if b.dtype == torch.float32 else b.dtype
        tol = b.testing.ELEMENTWISE_TOL[dtype]
        for label, m, n, k in shapes:
            x = torch.randn(m, k, device=b.dev).to(dtype)
            w = (torch.randn(2 * n, k, device=b.dev) / k ** 0.5).to(dtype)
            ref = b.ref.gated_linear(x, w, "silu")
            shape = f"{label} {m}x{n}x{k}"
            flops, nbytes = 2.0 * m * 2 * n * k, (m * k + 2 * n * k + m * n) * dtype.itemsize
            for path, fn in (
                    ("cuBLAS F.linear", lambda: torch.nn.functional.linear(x, w)),  # noqa: B023
                    ("cuBLAS + act_and_mul",
                     lambda: b.k.act_and_mul(torch.nn.functional.linear(x, w), "silu"))):  # noqa: B023
                row = Row(path, shape, ms=b.time_ms(fn), bytes_moved=nbytes, flops=flops)
                b.add(row)
            for tma in (False, True):
                for config in configs:
                    row = Row("gated GEMM" + (" TMA" if tma else ""), shape,
                              bytes_moved=nbytes, flops=flops,
                              note="BM={} BN={} BK={} w={} s={}".format(*config))
                    try:
                        out = gated_gemm(x, w, config, tma)
                    except Exception as e:  # a config this GPU cannot build is reported
                        if b.smoke:
                            raise
                        row.note += f"; unavailable: {type(e).__name__}"
                        b.add(row)
                        continue
                    b.check(row, out, ref, tol)
                    row.ms = b.time_ms(lambda c=config, t=tma: gated_gemm(x, w, c, t))  # noqa: B023
                    b.add(row)
