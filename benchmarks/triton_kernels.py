"""Validate and time localserve's Triton kernels on one GPU, against the reference and peers.

    python benchmarks/triton_kernels.py            # H100/H200 (torch + triton only), ~2 min
    python benchmarks/triton_kernels.py --sweep    # + split-KV and tile sweeps for tuning
    python benchmarks/triton_kernels.py --smoke    # CPU, Triton interpreter, tiny shapes

For every kernel and shape it first checks the output against kernels/reference.py (relative
error max|out - ref| / max|ref|, bound per dtype as in the tests), then times it with
triton.testing.do_bench (median, L2 flushed between runs) and reports achieved bandwidth:
the bytes a kernel must move at least (inputs read once, outputs written once; split-KV
partials and block tables not counted) over the time, against the H100 SXM's ~3.35 TB/s
HBM3. Attention also reports TFLOP/s (QK^T and PV, causal pairs only) against ~989 TFLOP/s
dense bf16. torch's scaled_dot_product_attention on dense (unpaged) K/V of the same shapes is
timed beside paged_attention as a peer. The table comes last.

This file holds the command line and the write_kv, element-wise and gemv sections; the
attention sections are in triton_attention_bench.py, the gated-GEMM experiment (`--only
gated_gemm`) in triton_gated_gemm_bench.py, the checking, timing and table in
triton_bench_core.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

from triton_attention_bench import AttentionSections  # this folder's modules
from triton_bench_core import Bench, Row, print_table

# Sections that run only when --only names them.
EXPERIMENTS = {"gated_gemm", "overlap"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true",
                   help="CPU + TRITON_INTERPRET=1 at tiny shapes (checks the script, not speed)")
    p.add_argument("--sweep", action="store_true",
                   help="also sweep num_kv_splits and attention tile sizes on a few shapes")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--only", default="", help="comma-separated sections to run (default: all "
                   f"but the experiments: {', '.join(sorted(EXPERIMENTS))})")
    return p.parse_args(argv)


def _make_localserve_importable() -> None:
    """Lets the script run from a bare checkout (torch + triton, localserve not installed).

    setup.py ships kernels/ as localserve.kernels; adding the repo root to the `localserve`
    package's search path maps it the same way. reference.py imports numpy only for its GGUF
    helper, so where numpy is absent an empty stand-in module lets it load.
    """
    try:
        import localserve.kernels.triton
        return
    except ImportError:
        pass
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, root)
    import localserve

    if root not in localserve.__path__:
        localserve.__path__.append(root)
    try:
        import numpy  # noqa: F401
    except ImportError:
        import types

        sys.modules["numpy"] = types.ModuleType("numpy")
        print("note: numpy not installed; reference.gguf_linear is unavailable", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    import torch

    _make_localserve_importable()

    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: run with --smoke for the CPU interpreter", file=sys.stderr)
        return 2
    bench = Bench(smoke=args.smoke, dtype=getattr(torch, args.dtype))
    kernels, attention = KernelSections(bench), AttentionSections(bench)
    only = {k for k in args.only.split(",") if k}
    started = time.perf_counter()
    sections: list[tuple[str, Callable[[], None]]] = [
        ("write_kv", kernels.write_kv), ("paged_attention", attention.attention),
        ("rms_norm", kernels.rms_norm), ("rotary_embedding", kernels.rotary),
        ("act_and_mul", kernels.act_and_mul), ("gemv", kernels.gemv),
        ("decode_paths", attention.decode_paths), ("decode_layout", attention.decode_layout),
        ("decode_order", attention.decode_order), ("prefill_chunk", attention.prefill_chunk),
        ("gated_gemm", lambda: gated_gemm_section(bench)), ("overlap", attention.overlap),
    ]
    for name, run in sections:
        if name in only or (not only and name not in EXPERIMENTS):
            run()
    if args.sweep:
        if not only or "gemv" in only:
            kernels.gemv_sweep()
        if not only or "paged_attention" in only:
            attention.sweep()
    print_table(bench.rows, bench.device_name, time.perf_counter() - started)
    failed = [r for r in bench.rows if r.ok is False]
    return 1 if failed else 0


def gated_gemm_section(bench: Bench) -> None:
    """The gated GEMM experiment (triton_gated_gemm_bench.py; it imports triton at load)."""
    from triton_gated_gemm_bench import GatedGemmSection

    GatedGemmSection(bench).gated_gemm()


class KernelSections:
    """The write_kv, element-wise and gemv sections, adding their rows to `b`."""

    def __init__(self, b: Bench) -> None:
        self.b = b

    # ---- write_kv --------------------------------------------------------------------------
    def write_kv(self) -> None:
        torch = self.b.torch
        print("write_kv", flush=True)
        kvh, hd, bs = (8, 128, 16) if not self.b.smoke else (2, 64, 16)
        for num_tokens in ([64, 4096, 16384] if not self.b.smoke else [5, 40]):
            num_blocks = num_tokens // bs + 64
            key = torch.randn(num_tokens, kvh, hd, device=self.b.dev, dtype=self.b.dtype)
            value = torch.randn_like(key)
            slots = torch.randperm(num_blocks * bs, device=self.b.dev)[:num_tokens]
            kc = torch.zeros(num_blocks, bs, kvh, hd, device=self.b.dev, dtype=self.b.dtype)
            vc = torch.zeros_like(kc)
            kr, vr = kc.clone(), vc.clone()
            self.b.k.write_kv(key, value, kc, vc, slots)
            self.b.ref.write_kv(key, value, kr, vr, slots)
            row = Row("write_kv", f"T={num_tokens} kvh={kvh} d={hd}")
            row.error = max(self.b.testing.rel_error(kc, kr), self.b.testing.rel_error(vc, vr))
            row.ok = row.error == 0.0
            row.ms = self.b.time_ms(lambda: self.b.k.write_kv(key, value, kc, vc, slots))  # noqa: B023
            row.bytes_moved = 4 * key.numel() * self.b.elem + slots.numel() * 8
            self.b.add(row)

    # ---- rms_norm --------------------------------------------------------------------------
    def rms_norm(self) -> None:
        torch = self.b.torch
        print("rms_norm", flush=True)
        shapes = [(64, 4096), (4096, 4096), (16384, 1024)] if not self.b.smoke else [(3, 128)]
        for rows, hidden in shapes:
            x = torch.randn(rows, hidden, device=self.b.dev, dtype=self.b.dtype)
            res = torch.randn_like(x)
            w = torch.randn(hidden, device=self.b.dev, dtype=self.b.dtype)
            row = Row("rms_norm+residual", f"{rows}x{hidden}")
            out, new_res = self.b.k.rms_norm(x, w, 1e-6, res)
            ref, ref_res = self.b.ref.rms_norm(x, w, 1e-6, res)
            tol = self.b.elementwise_tol()
            self.b.check(row, out, ref, tol)
            row.ok = row.ok and self.b.testing.rel_error(new_res, ref_res) <= tol
            row.ms = self.b.time_ms(lambda: self.b.k.rms_norm(x, w, 1e-6, res))  # noqa: B023
            row.bytes_moved = (4 * x.numel() + hidden) * self.b.elem
            self.b.add(row)
        # Qwen3 q-norm: per head over a strided slice of the qkv output.
        t = 4096 if not self.b.smoke else 3
        qkv = torch.randn(t, 32, 128, device=self.b.dev, dtype=self.b.dtype)
        w = torch.randn(128, device=self.b.dev, dtype=self.b.dtype)
        row = Row("rms_norm (q heads)", f"{t}x16x128 view of {t}x32x128")
        self.b.check(row, self.b.k.rms_norm(qkv[:, :16], w, 1e-6)[0],
                   self.b.ref.rms_norm(qkv[:, :16], w, 1e-6)[0], self.b.elementwise_tol())
        row.ms = self.b.time_ms(lambda: self.b.k.rms_norm(qkv[:, :16], w, 1e-6))
        row.bytes_moved = 2 * t * 16 * 128 * self.b.elem
        self.b.add(row)

    # ---- rotary ----------------------------------------------------------------------------
    def rotary(self) -> None:
        torch = self.b.torch
        print("rotary_embedding", flush=True)
        shapes = ([(64, 32, 8, 128), (4096, 32, 8, 128), (4096, 16, 8, 128)] if not self.b.smoke
                  else [(3, 4, 2, 64)])
        for t, nh, kvh, hd in shapes:
            cos_sin = self.b.ref.rope_cos_sin(hd, 8192, 500000.0).to(self.b.dev)
            pos = torch.randint(0, 8192, (t,), device=self.b.dev)
            q = torch.randn(t, nh, hd, device=self.b.dev, dtype=self.b.dtype)
            k = torch.randn(t, kvh, hd, device=self.b.dev, dtype=self.b.dtype)
            row = Row("rotary (in place)", f"T={t} q{nh} k{kvh} d={hd}")
            q_ref, k_ref = self.b.ref.rotary_embedding(pos, q, k, cos_sin)
            q2, k2 = self.b.k.rotary_embedding(pos, q, k, cos_sin)
            self.b.check(row, torch.cat([q2, k2], 1), torch.cat([q_ref, k_ref], 1),
                       self.b.elementwise_tol())
            row.ms = self.b.time_ms(
                lambda: self.b.k.rotary_embedding(pos, q, k, cos_sin, inplace=True))  # noqa: B023
            row.bytes_moved = 2 * t * (nh + kvh) * hd * self.b.elem + t * (8 + hd * 4)
            self.b.add(row)

    # ---- act_and_mul -----------------------------------------------------------------------
    def act_and_mul(self) -> None:
        torch = self.b.torch
        print("act_and_mul", flush=True)
        shapes = [(64, 14336), (4096, 14336), (4096, 3072)] if not self.b.smoke else [(3, 300)]
        for activation in ("silu", "gelu_tanh"):
            for t, d in shapes:
                x = torch.randn(t, 2 * d, device=self.b.dev, dtype=self.b.dtype)
                row = Row(f"act_and_mul {activation}", f"{t}x2*{d}")
                self.b.check(row, self.b.k.act_and_mul(x, activation),
                           self.b.ref.act_and_mul(x, activation), self.b.elementwise_tol())
                row.ms = self.b.time_ms(lambda: self.b.k.act_and_mul(x, activation))  # noqa: B023
                row.bytes_moved = 3 * t * d * self.b.elem
                self.b.add(row)

    # ---- gemv (decode linears) -------------------------------------------------------------
    def replay_ms(self, calls: list[Callable[[], object]]) -> float:
        """Per-call GPU time of `calls` replayed as one CUDA graph (no launch gaps; the
        callers rotate over weight copies larger than L2, so every call reads HBM)."""
        if self.b.smoke:
            return self.b.time_ms(lambda: [c() for c in calls]) / len(calls)
        torch = self.b.torch
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for c in calls:  # compile / pick algorithms outside the capture
                c()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for c in calls:
                c()
        for _ in range(3):
            graph.replay()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(10):
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / len(calls))
        return sorted(times)[len(times) // 2]

    def gemv_shapes(self) -> list[tuple[str, int, int]]:
        if self.b.smoke:
            return [("tiny", 96, 512)]
        return [("llama3-8b qkv", 6144, 4096), ("llama3-8b o_proj", 4096, 4096),
                ("llama3-8b gate_up", 28672, 4096), ("llama3-8b down", 4096, 14336),
                ("llama3-8b lm_head", 128256, 4096), ("qwen3-0.6b gate_up", 6144, 1024)]

    def gemv(self, configs: list | None = None, vector_configs: list | None = None) -> None:
        """gemv vs torch's F.linear (cuBLAS) on decode shapes, M = 1 / 4 / 8 / 16; at M = 1
        also the one-row vector gemv (the engine's tiles, or `vector_configs`), and on sm_90+
        the engine's one-row path behind an RMSNorm in a PDL chain (a decode layer's
        pattern): its time over its bytes at the copy bandwidth is the fixed cost a launch
        adds. (Session 11 timed TMA weight loads, 2-4 tiles before the PDL wait and L2
        prefetch this way, session 12 norms folded into the vector gemv: none faster;
        docs/benchmarks.md.)"""
        torch = self.b.torch
        from localserve.kernels.triton._common import pdl_override
        from localserve.kernels.triton.gemv import GemvConfig, gemv
        from localserve.kernels.triton.vector_gemv import vector_config, vector_gemv

        print("gemv", flush=True)
        configs = configs or [GemvConfig()]
        pdl = not self.b.smoke and torch.cuda.get_device_capability()[0] >= 9
        for label, n, k in self.gemv_shapes():
            copies = max(2, -(-160 * 2**20 // (n * k * self.b.elem)))  # > L2 together
            ws = [torch.randn(n, k, device=self.b.dev, dtype=self.b.dtype) / k ** 0.5
                  for _ in range(2 if self.b.smoke else copies)]
            for m in ([1, 4, 8, 16] if not self.b.smoke else [1, 3]):
                x = torch.randn(m, k, device=self.b.dev, dtype=self.b.dtype)
                nbytes = n * k * self.b.elem + m * (n + k) * self.b.elem
                shape = f"{label} M={m} {n}x{k}"
                cub = Row("F.linear (cuBLAS)", shape)
                cub.ms = self.replay_ms([lambda w=w: torch.nn.functional.linear(x, w)  # noqa: B023
                                         for w in ws])
                cub.bytes_moved = nbytes
                self.b.add(cub)
                kernels = [("gemv", gemv, cfg) for cfg in configs]
                if m == 1:
                    kernels += [("vector_gemv", vector_gemv, cfg)
                                for cfg in vector_configs or [vector_config(n, k)]]
                for name, fn, cfg in kernels:
                    row = Row(name, shape, bytes_moved=nbytes)
                    self.b.check(row, fn(x, ws[0], config=cfg), self.b.ref.linear(x, ws[0]),
                                 self.b.elementwise_tol())
                    row.ms = self.replay_ms([lambda w=w, f=fn, c=cfg: f(x, w, config=c)  # noqa: B023
                                             for w in ws])
                    row.note = (f"BN={cfg.block_n} BK={cfg.block_k} w={cfg.num_warps} "
                                f"s={cfg.num_stages}; {cub.ms / row.ms:.2f}x cuBLAS")
                    self.b.add(row)
                if m == 1 and pdl:
                    g = torch.randn(k, device=self.b.dev, dtype=self.b.dtype)
                    chain = Row("rms_norm + vector_gemv, PDL", shape)
                    with pdl_override(True):
                        chain.ms = self.replay_ms([
                            lambda w=w: vector_gemv(self.b.k.rms_norm(x, g, 1e-6)[0], w)  # noqa: B023
                            for w in ws])
                    chain.bytes_moved = nbytes
                    self.b.add(chain)

    def gemv_sweep(self) -> None:
        from localserve.kernels.triton.gemv import GemvConfig
        from localserve.kernels.triton.vector_gemv import VectorGemvConfig

        grid = [(16, 256, 4, 4), (16, 512, 4, 3), (32, 256, 4, 4), (32, 256, 8, 4),
                (32, 512, 8, 3), (64, 128, 4, 4), (64, 256, 8, 3), (16, 1024, 8, 2),
                (16, 256, 4, 6), (16, 512, 4, 4), (32, 128, 4, 6), (32, 512, 4, 3),
                (64, 256, 4, 3), (128, 128, 8, 3)]
        # The one-row gemv's: session 12's sweep (8 x 2,048, 8 warps, 1 stage won on 8B shapes).
        vector_grid = [(32, 256, 4, 4), (16, 1024, 8, 1), (8, 512, 4, 4), (16, 512, 4, 3),
                       (8, 1024, 4, 1), (16, 1024, 4, 1), (8, 1024, 8, 2), (32, 1024, 8, 1),
                       (16, 2048, 8, 1), (8, 256, 4, 4), (4, 1024, 4, 1), (16, 512, 8, 2),
                       (8, 2048, 8, 1)]
        if self.b.smoke:
            grid, vector_grid = [(16, 128, 4, 2), (32, 64, 4, 2)], [(8, 64, 4, 2)]
        self.gemv([GemvConfig(*g) for g in grid], [VectorGemvConfig(*g) for g in vector_grid])


if __name__ == "__main__":
    sys.exit(main())
