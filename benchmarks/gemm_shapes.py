"""The cuBLAS GEMMs of a Llama-3.1-8B step, timed alone: which shapes run below their floor.

Usage (GPU machine): python benchmarks/gemm_shapes.py [--m 500 16384] [--blas default cublaslt]

For each projection of a decoder layer (fused q/k/v, o, fused gate/up, down; the LM head) and
each token count M (by default the decode-graph buckets and two prefill chunks), times
F.linear on random bf16 weights with triton.testing.do_bench (median, L2 flushed) and prints
TFLOP/s, the fraction of its floor (weights and activations read once at the measured read
bandwidth, or the dense bf16 peak, whichever takes longer) and the cuBLAS kernel that ran
(from the torch profiler). First it prints the device's read and copy bandwidth (a sum and a
copy of 2 GiB), the ceilings of the memory-bound kernels.
"""

from __future__ import annotations

import argparse
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
LLAMA = os.path.join(HERE, "configs", "llama-3.1-8b", "config.json")
PEAK_BF16_FLOPS = 989e12  # H100 SXM5 dense bf16 tensor cores


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, nargs="+", default=None,
                    help="token counts (default: the decode graph buckets from 16 to 512, as "
                    "graphs.bucket_sizes pads batches, and two prefill chunks)")
    ap.add_argument("--blas", nargs="+", default=["default", "cublaslt"])
    args = ap.parse_args()
    from localserve.backends.cuda.graphs import bucket_sizes

    ms = args.m or [m for m in bucket_sizes(512) if m >= 16] + [8192, 16384]
    import torch
    import torch.nn.functional as F
    import triton.testing

    with open(LLAMA) as f:
        cfg = json.load(f)
    read, copy = bandwidths()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}: read {read / 1e12:.2f} "
          f"TB/s (sum of 2 GiB bf16), copy {copy / 1e12:.2f} TB/s (read + write)", flush=True)
    rows = []
    for name, n, k in projections(cfg):
        w = torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * 0.02
        for m in ms:
            x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
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
                print(f"  {name:8s} {rows[-1][1]:>18s} {blas:8s} {t_ms * 1e3:9.1f} us "
                      f"{tflops:6.0f} TFLOP/s {floor_ms / t_ms:4.0%} of floor  {rows[-1][6]}",
                      flush=True)
        del w
    torch.backends.cuda.preferred_blas_library("default")
    print("\nprojection | M x N x K | library | us | TFLOP/s | of floor | kernel")
    for r in rows:
        print(f"{r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} | {r[4]:.0f} | {r[5]:.0%} | {r[6]}")


if __name__ == "__main__":
    main()
