"""Probe: can a Triton GEMM that applies SiLU-and-mul in its epilogue replace cuBLAS + the
activation kernel in (c)'s prefill chunks? (issue 6, session 9; an experiment, not a kernel
the engine uses.)

Usage (GPU machine): python benchmarks/gated_gemm_probe.py
      (CPU interpreter, tiny shapes, correctness only): ... gated_gemm_probe.py --smoke

Why: in a 16,384-token prefill chunk of Llama-3-8B the MLP writes gate/up (940 MB a layer), and
SiLU-and-mul reads it back and writes 470 MB: ~0.5 ms a layer, ~0.1 s of (c), on a GPU that
runs at its power cap there (docs/benchmarks.md, session 9). A GEMM that keeps each output
tile's gate and up columns in two accumulators can apply act(gate) * up before it stores, so
neither the 940 MB nor the extra kernel exist. It pays only if the GEMM keeps up with cuBLAS
(~700 TFLOP/s on these shapes): this script times it against F.linear + act_and_mul at a few
tile configs, with pointer loads and with tensor descriptors (TMA), after checking each against
the fp32 reference.

The fused weight is [gate; up] (`layers.fusion`'s gate_up_proj): a program reads gate rows
[n, n + BLOCK_N) and up rows [N + n, N + n + BLOCK_N), so the weight needs no repacking.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if "--smoke" in sys.argv:  # the interpreter must be chosen before triton is imported
    os.environ["TRITON_INTERPRET"] = "1"

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor


@triton.jit
def tile_of(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(row block, column block) of program pid, in grouped order: GROUP_M row blocks take
    each column block in turn while its weights are in L2."""
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_m = min(tl.cdiv(M, BLOCK_M) - first_m, GROUP_M)
    return first_m + (pid % per_group) % group_m, (pid % per_group) // group_m


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
    pid_m, pid_n = tile_of(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
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
    act = acc_g * tl.sigmoid(acc_g)  # SiLU on the fp32 accumulator
    tl.store(out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :],
             (act * acc_u).to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def gated_gemm_tma_kernel(
    out_desc, x_desc, w_desc,   # host-side tensor descriptors (Hopper's TMA loads/stores)
    M, N,
    K: tl.constexpr,            # (a runtime K reaches the interpreter as a 1-element array)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_m, pid_n = tile_of(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    off_m = pid_m * BLOCK_M
    off_n = pid_n * BLOCK_N
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        x = x_desc.load([off_m, k0])
        # A last, partial gate tile reads up rows; they only feed columns >= N, which the
        # store drops. Up rows past 2N read as zeros.
        g = w_desc.load([off_n, k0])
        u = w_desc.load([N + off_n, k0])
        acc_g = tl.dot(x, g.T, acc_g)
        acc_u = tl.dot(x, u.T, acc_u)
    act = acc_g * tl.sigmoid(acc_g)
    out_desc.store([off_m, off_n], (act * acc_u).to(out_desc.dtype))


def gated_gemm(x: torch.Tensor, w: torch.Tensor, config: tuple[int, int, int, int, int],
               tma: bool = False) -> torch.Tensor:
    """silu(x @ gate^T) * (x @ up^T) for w = [gate; up]; config (BM, BN, BK, warps, stages);
    tma: operands through tensor descriptors (Hopper's bulk copies) instead of pointers."""
    m, k = x.shape
    n = w.shape[0] // 2
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    bm, bn, bk, warps, stages = config
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    launch = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "num_warps": warps,
              "num_stages": stages}
    if tma:  # keywords: the interpreter unpacks descriptors into several arguments
        gated_gemm_tma_kernel[grid](out_desc=TensorDescriptor.from_tensor(out, [bm, bn]),
                                    x_desc=TensorDescriptor.from_tensor(x, [bm, bk]),
                                    w_desc=TensorDescriptor.from_tensor(w, [bn, bk]),
                                    M=m, N=n, K=k, **launch)
    else:
        gated_gemm_kernel[grid](out, x, w, m, n, k, out.stride(0), x.stride(0), w.stride(0),
                             **launch)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU interpreter, tiny shapes")
    args = ap.parse_args()
    from localserve.kernels import reference
    from localserve.kernels.triton import act_and_mul

    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: run with --smoke for the CPU interpreter", file=sys.stderr)
        return 2
    dev = torch.device("cpu" if args.smoke else "cuda")
    dtype = torch.float32 if args.smoke else torch.bfloat16
    # (label, M, N = intermediate size, K = hidden size)
    shapes = ([("tiny", 40, 40, 96)] if args.smoke else
              [("llama3-8b (c) chunk", 16384, 14336, 4096), ("llama3-8b", 4096, 14336, 4096),
               ("qwen3-0.6b chunk", 16384, 3072, 1024)])
    configs = ([(16, 16, 32, 4, 1), (32, 16, 16, 4, 2)] if args.smoke else
               [(128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 64, 64, 4, 4),
                (128, 64, 64, 8, 4), (64, 128, 64, 4, 4), (256, 64, 64, 8, 3),
                (128, 128, 32, 8, 4), (128, 256, 64, 8, 3)])
    from triton.testing import do_bench

    def time_ms(fn) -> float:
        if args.smoke:
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3
        return do_bench(fn, warmup=25, rep=100)

    rows = []
    for label, m, n, k in shapes:
        x = torch.randn(m, k, device=dev).to(dtype)
        w = (torch.randn(2 * n, k, device=dev) / k ** 0.5).to(dtype)
        gate_up = reference.linear(x, w)  # the unfused path's rounding: gate/up in x's dtype
        ref = reference.act_and_mul(gate_up, "silu")
        flops = 2.0 * m * 2 * n * k
        ms = time_ms(lambda: torch.nn.functional.linear(x, w))  # noqa: B023
        rows.append((label, "cuBLAS F.linear alone", ms, flops / ms / 1e9, "(no activation)"))
        ms = time_ms(lambda: act_and_mul(torch.nn.functional.linear(x, w), "silu"))  # noqa: B023
        rows.append((label, "cuBLAS F.linear + act_and_mul", ms, flops / ms / 1e9,
                     "the row to beat"))
        for tma in (False, True):
            for config in configs:
                path = f"fused{' TMA' if tma else ''} {config}"
                try:
                    out = gated_gemm(x, w, config, tma)
                except Exception as e:  # a config that does not fit this GPU is reported
                    if args.smoke:
                        raise
                    rows.append((label, path, None, None, type(e).__name__))
                    continue
                err = ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
                ok = err <= (2e-2 if dtype == torch.bfloat16 else 1e-4)
                ms = time_ms(lambda c=config, t=tma: gated_gemm(x, w, c, t))  # noqa: B023
                rows.append((label, path, ms, flops / ms / 1e9,
                             f"rel err {err:.1e}{'' if ok else ' FAIL'}"))
    name = "CPU interpreter" if args.smoke else torch.cuda.get_device_name()
    print(f"\ngated GEMM probe on {name}, {dtype} (config: BM, BN, BK, warps, stages)")
    print(f"{'shape':<22} {'path':<36} {'time ms':>9} {'TFLOP/s':>8}  notes")
    for label, path, ms, tflops, note in rows:
        t = f"{ms:9.3f}" if ms is not None else f"{'-':>9}"
        f = f"{tflops:8.1f}" if tflops is not None else f"{'-':>8}"
        print(f"{label:<22} {path:<36} {t} {f}  {note}")
    return 1 if any("FAIL" in r[4] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
