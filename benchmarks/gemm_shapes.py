"""The cuBLAS GEMMs of a Llama-3.1-8B step, timed alone: which shapes run below their floor.

Usage (GPU machine): python benchmarks/gemm_shapes.py [--m 500 16384] [--blas default cublaslt]
                    [--triton] [--projections o down]

For each projection of a decoder layer (fused q/k/v, o, fused gate/up, down; the LM head) and
each token count M (by default the decode-graph buckets and two prefill chunks), times
F.linear on random bf16 weights with triton.testing.do_bench (median, L2 flushed) and prints
TFLOP/s, the fraction of its floor (weights and activations read once at the measured read
bandwidth, or the dense bf16 peak, whichever takes longer) and the cuBLAS kernel that ran
(from the torch profiler). First it prints the device's read and copy bandwidth (a sum and a
copy of 2 GiB), the ceilings of the memory-bound kernels.

--triton also times the split-K Triton kernel (kernels/triton/splitk_gemm.py) at each M of 17
to 256: its default config and a sweep of tiles and splits, each checked against F.linear,
against the faster of the BLAS libraries measured.
"""

from __future__ import annotations

import argparse
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
LLAMA = os.path.join(HERE, "configs", "llama-3.1-8b", "config.json")
PEAK_BF16_FLOPS = 989e12  # H100 SXM5 dense bf16 tensor cores
SPLITK_TOL = 2e-2  # max |splitk - F.linear| / max |F.linear| in bf16


def projections(cfg: dict) -> list[tuple[str, int, int]]:
    """(name, out_features, in_features) of one decoder layer's matmuls and the LM head."""
    h, inter, heads = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"]
    kv, hd = cfg["num_key_value_heads"], cfg.get("head_dim") or h // heads
    return [("qkv", (heads + 2 * kv) * hd, h), ("o", h, heads * hd), ("gate_up", 2 * inter, h),
            ("down", h, inter), ("lm_head", cfg["vocab_size"], h)]


def kernel_name(fn) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
    names = [e.key for e in prof.key_averages() if e.device_time_total > 0
             and not e.key.startswith(("aten::", "Memset", "Memcpy"))]
    return names[0][:60] if names else "?"


def bandwidths() -> tuple[float, float]:
    """(read, copy) bytes per second over 2 GiB buffers."""
    import torch
    import triton.testing

    n = 1 << 30
    a = torch.ones(n, dtype=torch.bfloat16, device="cuda")
    b = torch.empty_like(a)
    read_ms = triton.testing.do_bench(lambda: a.sum(dtype=torch.float32), return_mode="median")
    copy_ms = triton.testing.do_bench(lambda: b.copy_(a), return_mode="median")
    return 2 * n / read_ms * 1e3, 4 * n / copy_ms * 1e3


def splitk_configs(m: int) -> list:
    """The sweep: 64/128 weight rows x 64/128-wide K tiles x 1, 2, 4, 8 splits; 8 warps past
    64 accumulator registers a thread at 4, as many of 4 stages as 227 KB of shared memory
    holds (the default config's rules)."""
    from localserve.kernels.triton._common import next_pow2
    from localserve.kernels.triton.splitk_gemm import MIN_BLOCK_M, SplitKConfig

    bm = max(MIN_BLOCK_M, next_pow2(m))
    return [SplitKConfig(block_n=bn, block_k=bk, split_k=split,
                         num_warps=8 if bn * bm // 128 > 64 else 4,
                         num_stages=min(4, 227 * 1024 // ((bn + bm) * bk * 2)))
            for bn in (64, 128) for bk in (64, 128) for split in (1, 2, 4, 8)]


def time_splitk(x, w) -> tuple[float | None, str, float | None]:
    """(default config us, best config, its us) of splitk_gemm(x, w), the default among the
    candidates for best; None where nothing ran.

    Skips splits the wrapper would lower (the workspace bound, fewer K tiles than splits),
    launches that need more shared memory than the GPU has, and results off F.linear (FAIL).
    """
    import torch
    import torch.nn.functional as F
    import triton.testing
    from triton.runtime.errors import OutOfResources

    from localserve.kernels.triton.splitk_gemm import (
        MAX_WORKSPACE_BYTES,
        default_config,
        splitk_gemm,
    )

    (m, k), n = x.shape, w.shape[0]
    ref = F.linear(x, w).float()
    default = default_config(x, w)
    print(f"    splitk default config: {default}", flush=True)
    cases = [("default", default)] + [
        (f"{c.block_n}x{c.block_k}/s{c.split_k}", c) for c in splitk_configs(m)
        if c.split_k * m * n * 4 <= MAX_WORKSPACE_BYTES and c.split_k <= -(-k // c.block_k)]
    times = {}
    for label, cfg in cases:
        try:
            err = ((splitk_gemm(x, w, config=cfg).float() - ref).abs().max()
                   / ref.abs().max()).item()
        except OutOfResources as e:
            print(f"    skip {label}: {e}", flush=True)
            continue
        if not err <= SPLITK_TOL:
            print(f"    FAIL {label}: relative error {err:.3g} > {SPLITK_TOL}", flush=True)
            continue
        times[label] = triton.testing.do_bench(
            lambda cfg=cfg: splitk_gemm(x, w, config=cfg), return_mode="median") * 1e3
    torch.cuda.synchronize()
    best = min(times, key=times.get) if times else "-"
    return times.get("default"), best, times.get(best)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, nargs="+", default=None,
                    help="token counts (default: the decode graph buckets from 16 to 512, as "
                    "graphs.bucket_sizes pads batches, and two prefill chunks)")
    ap.add_argument("--blas", nargs="+", default=["default", "cublaslt"])
    ap.add_argument("--triton", action="store_true",
                    help="also time splitk_gemm (default config and a sweep) at M = 17-256")
    ap.add_argument("--projections", nargs="+", default=None,
                    help="only these projections (qkv, o, gate_up, down, lm_head)")
    args = ap.parse_args()
    from localserve.backends.cuda.graphs import bucket_sizes

    if args.triton:
        from localserve.kernels.triton.splitk_gemm import MAX_ROWS

    ms = args.m or [m for m in bucket_sizes(512) if m >= 16] + [8192, 16384]
    import torch
    import torch.nn.functional as F
    import triton.testing

    with open(LLAMA) as f:
        cfg = json.load(f)
    read, copy = bandwidths()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}: read {read / 1e12:.2f} "
          f"TB/s (sum of 2 GiB bf16), copy {copy / 1e12:.2f} TB/s (read + write)", flush=True)
    rows, splitk_rows = [], []
    for name, n, k in projections(cfg):
        if args.projections and name not in args.projections:
            continue
        w = torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * 0.02
        for m in ms:
            x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
            blas_us = []
            for blas in args.blas:
                torch.backends.cuda.preferred_blas_library(blas)
                t_ms = triton.testing.do_bench(lambda x=x, w=w: F.linear(x, w),
                                             return_mode="median")
                tflops = 2 * m * n * k / t_ms / 1e9
                # The floor: the weights and activations moved once, or the dense peak.
                floor_ms = max(2 * (n * k + m * k + m * n) / read,
                               2 * m * n * k / PEAK_BF16_FLOPS) * 1e3
                rows.append((name, f"{m}x{n}x{k}", blas, t_ms * 1e3, tflops, floor_ms / t_ms,
                             kernel_name(lambda x=x, w=w: F.linear(x, w))))
                blas_us.append(t_ms * 1e3)
                print(f"  {name:8s} {rows[-1][1]:>18s} {blas:8s} {t_ms * 1e3:9.1f} us "
                      f"{tflops:6.0f} TFLOP/s {floor_ms / t_ms:4.0%} of floor  {rows[-1][6]}",
                      flush=True)
            if args.triton and 16 < m <= MAX_ROWS:
                default_us, best, best_us = time_splitk(x, w)
                cublas = min(blas_us)
                splitk_rows.append((name, m, cublas, default_us, best, best_us))
                print(f"  {name:8s} M={m:<3d} splitk: cuBLAS {cublas:.1f} us, default "
                      f"{_us(default_us)} us, best {best} {_us(best_us)} us, best/cuBLAS "
                      f"{_ratio(best_us, cublas)}", flush=True)
        del w
    torch.backends.cuda.preferred_blas_library("default")
    print("\nprojection | M x N x K | library | us | TFLOP/s | of floor | kernel")
    for r in rows:
        print(f"{r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} | {r[4]:.0f} | {r[5]:.0%} | {r[6]}")
    if splitk_rows:
        print("\nprojection | M | cuBLAS us | splitk default us | best config | best us | "
              "best/cuBLAS")
        for name, m, cublas, default_us, best, best_us in splitk_rows:
            print(f"{name} | {m} | {cublas:.1f} | {_us(default_us)} | {best} | {_us(best_us)} | "
                  f"{_ratio(best_us, cublas)}")


def _us(t: float | None) -> str:
    return "-" if t is None else f"{t:.1f}"


def _ratio(t: float | None, cublas: float) -> str:
    return "-" if t is None else f"{t / cublas:.2f}"


if __name__ == "__main__":
    main()
