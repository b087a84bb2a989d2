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
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

HBM_BYTES_PER_S = 3.35e12   # H100 SXM5 HBM3
PEAK_BF16_FLOPS = 989e12    # H100 SXM5 dense bf16 tensor cores


@dataclass
class Row:
    kernel: str
    shape: str
    error: float | None = None     # relative error vs the reference (None: not checked)
    ok: bool | None = None
    ms: float | None = None
    bytes_moved: float = 0.0
    flops: float = 0.0
    note: str = ""
    extra: dict = field(default_factory=dict)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true",
                   help="CPU + TRITON_INTERPRET=1 at tiny shapes (checks the script, not speed)")
    p.add_argument("--sweep", action="store_true",
                   help="also sweep num_kv_splits and attention tile sizes on a few shapes")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--only", default="", help="comma-separated kernel names to run")
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
    only = {k for k in args.only.split(",") if k}
    started = time.perf_counter()
    sections: list[tuple[str, Callable[[], None]]] = [
        ("write_kv", bench.write_kv), ("paged_attention", bench.attention),
        ("rms_norm", bench.rms_norm), ("rotary_embedding", bench.rotary),
        ("act_and_mul", bench.act_and_mul), ("gemv", bench.gemv),
        ("decode_paths", bench.decode_paths), ("decode_layout", bench.decode_layout),
        ("decode_order", bench.decode_order), ("prefill_chunk", bench.prefill_chunk),
    ]
    for name, run in sections:
        if not only or name in only:
            run()
    if args.sweep:
        if not only or "gemv" in only:
            bench.gemv_sweep()
        if not only or "paged_attention" in only:
            bench.sweep()
    print_table(bench.rows, bench.device_name, time.perf_counter() - started)
    failed = [r for r in bench.rows if r.ok is False]
    return 1 if failed else 0


@dataclass
class AttentionCase:
    """One attention shape with its inputs and reference output, reused across variants."""

    label: str
    nh: int
    kvh: int
    hd: int
    q_lens: list[int]
    seq_lens: list[int]
    batch: object   # testing.PagedBatch
    ref: object     # torch.Tensor


class Bench:
    """Builds inputs, checks against the reference, times; one method per kernel family."""

    def __init__(self, smoke: bool, dtype) -> None:
        import torch

        from localserve.kernels import reference
        from localserve.kernels import triton as kernels
        from localserve.kernels.triton import testing

        self.torch, self.ref, self.k, self.testing = torch, reference, kernels, testing
        self.smoke = smoke
        self.dev = testing.device()
        self.dtype = torch.float32 if smoke else dtype
        self.rows: list[Row] = []
        self.device_name = ("CPU (Triton interpreter)" if smoke
                            else torch.cuda.get_device_name(self.dev))

    # ---- helpers ---------------------------------------------------------------------------
    def time_ms(self, fn: Callable[[], object]) -> float:
        if self.smoke:  # the interpreter: one warm call, one timed call (not a speed figure)
            fn()
            t = time.perf_counter()
            fn()
            return (time.perf_counter() - t) * 1e3
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=20, rep=60, return_mode="median"))

    def check(self, row: Row, out, ref, tol: float) -> None:
        row.error = self.testing.rel_error(out, ref)
        row.ok = row.error <= tol
        if not row.ok:
            print(f"FAIL {row.kernel} {row.shape}: relative error {row.error:.3g} > {tol:.1g}",
                  file=sys.stderr)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        ms = f"{row.ms * 1e3:9.1f} us" if row.ms is not None else "-"
        err = f"{row.error:.2e}" if row.error is not None else "-"
        print(f"  {row.kernel:<22} {row.shape:<34} err {err}  {ms}  {row.note}", flush=True)

    @property
    def elem(self) -> int:
        return self.torch.finfo(self.dtype).bits // 8

    def elementwise_tol(self) -> float:
        return self.testing.ELEMENTWISE_TOL[self.dtype]

    # ---- write_kv --------------------------------------------------------------------------
    def write_kv(self) -> None:
        torch = self.torch
        print("write_kv", flush=True)
        kvh, hd, bs = (8, 128, 16) if not self.smoke else (2, 64, 16)
        for num_tokens in ([64, 4096, 16384] if not self.smoke else [5, 40]):
            num_blocks = num_tokens // bs + 64
            key = torch.randn(num_tokens, kvh, hd, device=self.dev, dtype=self.dtype)
            value = torch.randn_like(key)
            slots = torch.randperm(num_blocks * bs, device=self.dev)[:num_tokens]
            kc = torch.zeros(num_blocks, bs, kvh, hd, device=self.dev, dtype=self.dtype)
            vc = torch.zeros_like(kc)
            kr, vr = kc.clone(), vc.clone()
            self.k.write_kv(key, value, kc, vc, slots)
            self.ref.write_kv(key, value, kr, vr, slots)
            row = Row("write_kv", f"T={num_tokens} kvh={kvh} d={hd}")
            row.error = max(self.testing.rel_error(kc, kr), self.testing.rel_error(vc, vr))
            row.ok = row.error == 0.0
            row.ms = self.time_ms(lambda: self.k.write_kv(key, value, kc, vc, slots))  # noqa: B023
            row.bytes_moved = 4 * key.numel() * self.elem + slots.numel() * 8
            self.add(row)

    # ---- paged_attention -------------------------------------------------------------------
    def attention_shapes(self) -> list[tuple[str, int, int, int, list[int], list[int]]]:
        """(label, num_heads, num_kv_heads, head_dim, q_lens, seq_lens)."""
        if self.smoke:
            return [("tiny decode", 4, 2, 64, [1, 1], [40, 70]),
                    ("tiny prefill", 4, 2, 64, [24], [24])]
        shapes = []
        for model, nh, kvh in (("llama3-8b", 32, 8), ("qwen3-0.6b", 16, 8)):
            for ctx in (1024, 2048, 4096, 8192):
                shapes.append((f"{model} decode 64x{ctx}", nh, kvh, 128, [1] * 64, [ctx] * 64))
            shapes.append((f"{model} prefill 1x4096", nh, kvh, 128, [4096], [4096]))
            shapes.append((f"{model} prefill 8x512", nh, kvh, 128, [512] * 8, [512] * 8))
        shapes.append(("llama3-8b decode 1x8192", 32, 8, 128, [1], [8192]))
        return shapes

    def attention(self) -> None:
        print("paged_attention", flush=True)
        for shape in self.attention_shapes():
            case = self.attention_inputs(*shape)
            row = self.attention_row(case)
            if not self.smoke:
                self.sdpa_peer(case, row)
                del case
                self.torch.cuda.empty_cache()

    def attention_inputs(self, label: str, nh: int, kvh: int, hd: int, q_lens: list[int],
                         seq_lens: list[int], heads_major: bool = False) -> AttentionCase:
        batch = self.testing.make_paged_batch(q_lens, seq_lens, nh, kvh, hd, 16, self.dtype,
                                              self.dev, poison_unused=False,
                                              heads_major=heads_major)
        ref = self.ref.paged_attention(*batch.args(), hd ** -0.5)
        return AttentionCase(label, nh, kvh, hd, q_lens, seq_lens, batch, ref)

    def attention_row(self, case: AttentionCase, variant: str = "",
                      num_kv_splits: int | None = None,
                      launch_override: dict | None = None) -> Row:
        """Checks and times paged_attention on `case`, optionally forcing its launch choice."""
        import dataclasses

        from localserve.kernels.triton import attention as attn_mod

        batch, scale = case.batch, case.hd ** -0.5
        bounds = {"max_query_len": batch.max_query_len, "max_seq_len": batch.max_seq_len}

        def run():
            return self.k.paged_attention(*batch.args(), scale, num_kv_splits=num_kv_splits,
                                          **bounds)

        original = attn_mod.choose_launch
        if launch_override:  # tuning sweeps: force tile sizes through the launch choice
            attn_mod.choose_launch = lambda **kw: dataclasses.replace(original(**kw),
                                                                      **launch_override)
        try:
            spec = attn_mod.choose_launch(
                num_seqs=len(case.seq_lens), num_kv_heads=case.kvh, group=case.nh // case.kvh,
                head_dim=case.hd, num_sms=self.testing_num_sms(), num_kv_splits=num_kv_splits,
                elem_bytes=self.elem, **bounds)
            row = Row("paged_attention", f"{case.label} {variant}".strip())
            self.check(row, run(), case.ref, self.testing.ATTENTION_TOL[self.dtype])
            row.ms = self.time_ms(run)
        finally:
            attn_mod.choose_launch = original
        num_tokens, kv_tokens = sum(case.q_lens), sum(case.seq_lens)
        row.bytes_moved = (2 * num_tokens * case.nh * case.hd
                           + 2 * kv_tokens * case.kvh * case.hd) * self.elem
        pairs = sum(q * s - q * (q - 1) / 2
                    for q, s in zip(case.q_lens, case.seq_lens, strict=True))
        row.flops = 4.0 * pairs * case.nh * case.hd
        row.note = (f"BM={spec.block_m} BN={spec.block_n} splits={spec.num_splits} "
                    f"w={spec.num_warps} s={spec.num_stages}")
        self.add(row)
        return row

    def testing_num_sms(self) -> int:
        from localserve.kernels.triton._common import num_sms

        return num_sms(self.dev)

    def sdpa_peer(self, case: AttentionCase, ours: Row) -> None:
        """torch SDPA on dense K/V of the same shape (equal-length sequences only)."""
        torch = self.torch
        q_lens, seq_lens, batch = case.q_lens, case.seq_lens, case.batch
        nh, hd = case.nh, case.hd
        if len(set(q_lens)) != 1 or len(set(seq_lens)) != 1:
            return
        b, q_len, ctx = len(q_lens), q_lens[0], seq_lens[0]
        causal = q_len > 1  # decode: the one query sees every key
        if causal and q_len != ctx:
            return
        from localserve.kernels.reference import gather_kv

        k = torch.stack([gather_kv(batch.k_cache, batch.block_tables[s], ctx)
                         for s in range(b)]).transpose(1, 2).contiguous()  # [b, kvh, ctx, hd]
        v = torch.stack([gather_kv(batch.v_cache, batch.block_tables[s], ctx)
                         for s in range(b)]).transpose(1, 2).contiguous()
        q = batch.q.view(b, q_len, nh, hd).transpose(1, 2)                 # [b, nh, q, hd]
        scale = hd ** -0.5

        def run():
            return torch.nn.functional.scaled_dot_product_attention(
                q, k, v, is_causal=causal, scale=scale, enable_gqa=True)

        row = Row("torch SDPA (dense)", case.label)
        try:
            out = run().transpose(1, 2).reshape(-1, nh, hd)
            row.error = self.testing.rel_error(out, case.ref)
            row.ms = self.time_ms(run)
        except Exception as e:  # a peer that cannot run this shape is reported, not fatal
            row.note = f"unavailable: {type(e).__name__}"
        row.bytes_moved, row.flops = ours.bytes_moved, ours.flops
        if row.ms and ours.ms:
            row.note = f"paged_attention is {row.ms / ours.ms:.2f}x its speed"
        self.add(row)

    # ---- rms_norm --------------------------------------------------------------------------
    def rms_norm(self) -> None:
        torch = self.torch
        print("rms_norm", flush=True)
        shapes = [(64, 4096), (4096, 4096), (16384, 1024)] if not self.smoke else [(3, 128)]
        for rows, hidden in shapes:
            x = torch.randn(rows, hidden, device=self.dev, dtype=self.dtype)
            res = torch.randn_like(x)
            w = torch.randn(hidden, device=self.dev, dtype=self.dtype)
            row = Row("rms_norm+residual", f"{rows}x{hidden}")
            out, new_res = self.k.rms_norm(x, w, 1e-6, res)
            ref, ref_res = self.ref.rms_norm(x, w, 1e-6, res)
            self.check(row, out, ref, self.elementwise_tol())
            row.ok = row.ok and self.testing.rel_error(new_res, ref_res) <= self.elementwise_tol()
            row.ms = self.time_ms(lambda: self.k.rms_norm(x, w, 1e-6, res))  # noqa: B023
            row.bytes_moved = (4 * x.numel() + hidden) * self.elem
            self.add(row)
        # Qwen3 q-norm: per head over a strided slice of the qkv output.
        t = 4096 if not self.smoke else 3
        qkv = torch.randn(t, 32, 128, device=self.dev, dtype=self.dtype)
        w = torch.randn(128, device=self.dev, dtype=self.dtype)
        row = Row("rms_norm (q heads)", f"{t}x16x128 view of {t}x32x128")
        self.check(row, self.k.rms_norm(qkv[:, :16], w, 1e-6)[0],
                   self.ref.rms_norm(qkv[:, :16], w, 1e-6)[0], self.elementwise_tol())
        row.ms = self.time_ms(lambda: self.k.rms_norm(qkv[:, :16], w, 1e-6))
        row.bytes_moved = 2 * t * 16 * 128 * self.elem
        self.add(row)

    # ---- rotary ----------------------------------------------------------------------------
    def rotary(self) -> None:
        torch = self.torch
        print("rotary_embedding", flush=True)
        shapes = ([(64, 32, 8, 128), (4096, 32, 8, 128), (4096, 16, 8, 128)] if not self.smoke
                  else [(3, 4, 2, 64)])
        for t, nh, kvh, hd in shapes:
            cos_sin = self.ref.rope_cos_sin(hd, 8192, 500000.0).to(self.dev)
            pos = torch.randint(0, 8192, (t,), device=self.dev)
            q = torch.randn(t, nh, hd, device=self.dev, dtype=self.dtype)
            k = torch.randn(t, kvh, hd, device=self.dev, dtype=self.dtype)
            row = Row("rotary (in place)", f"T={t} q{nh} k{kvh} d={hd}")
            q_ref, k_ref = self.ref.rotary_embedding(pos, q, k, cos_sin)
            q2, k2 = self.k.rotary_embedding(pos, q, k, cos_sin)
            self.check(row, torch.cat([q2, k2], 1), torch.cat([q_ref, k_ref], 1),
                       self.elementwise_tol())
            row.ms = self.time_ms(
                lambda: self.k.rotary_embedding(pos, q, k, cos_sin, inplace=True))  # noqa: B023
            row.bytes_moved = 2 * t * (nh + kvh) * hd * self.elem + t * (8 + hd * 4)
            self.add(row)

    # ---- act_and_mul -----------------------------------------------------------------------
    def act_and_mul(self) -> None:
        torch = self.torch
        print("act_and_mul", flush=True)
        shapes = [(64, 14336), (4096, 14336), (4096, 3072)] if not self.smoke else [(3, 300)]
        for activation in ("silu", "gelu_tanh"):
            for t, d in shapes:
                x = torch.randn(t, 2 * d, device=self.dev, dtype=self.dtype)
                row = Row(f"act_and_mul {activation}", f"{t}x2*{d}")
                self.check(row, self.k.act_and_mul(x, activation),
                           self.ref.act_and_mul(x, activation), self.elementwise_tol())
                row.ms = self.time_ms(lambda: self.k.act_and_mul(x, activation))  # noqa: B023
                row.bytes_moved = 3 * t * d * self.elem
                self.add(row)

    # ---- gemv (decode linears) -------------------------------------------------------------
    def replay_ms(self, calls: list[Callable[[], object]]) -> float:
        """Per-call GPU time of `calls` replayed as one CUDA graph (no launch gaps; the
        callers rotate over weight copies larger than L2, so every call reads HBM)."""
        if self.smoke:
            return self.time_ms(lambda: [c() for c in calls]) / len(calls)
        torch = self.torch
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
        if self.smoke:
            return [("tiny", 96, 512)]
        return [("llama3-8b qkv", 6144, 4096), ("llama3-8b o_proj", 4096, 4096),
                ("llama3-8b gate_up", 28672, 4096), ("llama3-8b down", 4096, 14336),
                ("llama3-8b lm_head", 128256, 4096), ("qwen3-0.6b gate_up", 6144, 1024)]

    def gemv(self, configs: list | None = None) -> None:
        """gemv vs torch's F.linear (cuBLAS) on decode shapes, M = 1 / 4 / 8."""
        torch = self.torch
        from localserve.kernels.triton.gemv import GemvConfig, gemv

        print("gemv", flush=True)
        configs = configs or [GemvConfig()]
        for label, n, k in self.gemv_shapes():
            copies = max(2, -(-160 * 2**20 // (n * k * self.elem)))  # > L2 together
            ws = [torch.randn(n, k, device=self.dev, dtype=self.dtype) / k ** 0.5
                  for _ in range(copies)]
            for m in ([1, 4, 8] if not self.smoke else [1, 3]):
                x = torch.randn(m, k, device=self.dev, dtype=self.dtype)
                nbytes = n * k * self.elem + m * (n + k) * self.elem
                cub = Row("F.linear (cuBLAS)", f"{label} M={m} {n}x{k}")
                cub.ms = self.replay_ms([lambda w=w: torch.nn.functional.linear(x, w)  # noqa: B023
                                         for w in ws])
                cub.bytes_moved = nbytes
                self.add(cub)
                for cfg in configs:
                    row = Row("gemv", f"{label} M={m} {n}x{k}")
                    self.check(row, gemv(x, ws[0], config=cfg), self.ref.linear(x, ws[0]),
                               self.elementwise_tol())
                    row.ms = self.replay_ms([lambda w=w, cfg=cfg: gemv(x, w, config=cfg)  # noqa: B023
                                             for w in ws])
                    row.bytes_moved = nbytes
                    row.note = (f"BN={cfg.block_n} BK={cfg.block_k} w={cfg.num_warps} "
                                f"s={cfg.num_stages}; {cub.ms / row.ms:.2f}x cuBLAS")
                    self.add(row)

    def gemv_sweep(self) -> None:
        from localserve.kernels.triton.gemv import GemvConfig

        grid = [(16, 256, 4, 4), (16, 512, 4, 3), (32, 256, 4, 4), (32, 256, 8, 4),
                (32, 512, 8, 3), (64, 128, 4, 4), (64, 256, 8, 3), (16, 1024, 8, 2),
                (16, 256, 4, 6), (16, 512, 4, 4), (32, 128, 4, 6), (32, 512, 4, 3),
                (64, 256, 4, 3), (128, 128, 8, 3)]
        if self.smoke:
            grid = [(16, 128, 4, 2), (32, 64, 4, 2)]
        self.gemv([GemvConfig(*g) for g in grid])

    # ---- decode attention as the engine's steps call it --------------------------------------
    def decode_shapes(self) -> list[tuple[str, int, int, int, list[int]]]:
        """(label, heads, kv heads, head_dim, sequence lengths) like gpu_bench's (b), (c)."""
        rng = random.Random(0)
        if self.smoke:
            return [("tiny ragged", 4, 2, 64, [rng.randint(5, 90) for _ in range(6)])]
        return [("qwen3 (b) 256 ragged 200-2048", 16, 8, 128,
                 [rng.randint(200, 2048) for _ in range(256)]),
                ("llama3 (c) 500 ragged 150-560", 32, 8, 128,
                 [rng.randint(150, 560) for _ in range(500)])]

    def decode_layout(self) -> None:
        """Decode attention over pages stored token by token (the view's own layout) and head
        by head (`cache.kv_cache_pages(heads_major=True)`), same data, same launch."""
        print("decode_layout", flush=True)
        for label, nh, kvh, hd, seq_lens in self.decode_shapes():
            for heads_major in (False, True, False, True):
                case = self.attention_inputs(label, nh, kvh, hd, [1] * len(seq_lens), seq_lens,
                                             heads_major=heads_major)
                self.attention_row(case, "[heads-major pages]" if heads_major else
                                   "[token-major pages]")
                del case
            if not self.smoke:
                self.torch.cuda.empty_cache()

    def decode_paths(self) -> None:
        """Decode attention on ragged batches like gpu_bench's (b) and (c): the decode path (one
        program per sequence) against the general one (binary search per program), and a few
        tile sizes around the default. (Batch 1 is left out: timed alone, the wrapper's host
        work between launches is longer than the kernel.)"""
        print("decode_paths", flush=True)
        for label, nh, kvh, hd, seq_lens in self.decode_shapes():
            case = self.attention_inputs(label, nh, kvh, hd, [1] * len(seq_lens), seq_lens)
            self.attention_row(case, "[decode path]")
            self.attention_row(case, "[general path]", launch_override={"decode": False})
            for bn, stages, warps in ((32, 2, 4), (128, 2, 4), (64, 3, 4), (64, 2, 2),
                                      (64, 2, 8), (128, 3, 4), (128, 2, 8)):
                self.attention_row(case, f"[decode BN={bn} s={stages} w={warps}]",
                                   launch_override={"block_n": bn, "num_stages": stages,
                                                    "num_warps": warps})
            del case
            if not self.smoke:
                self.torch.cuda.empty_cache()

    def decode_order(self) -> None:
        """Decode attention with the batch in arrival (random) order and sorted by length: a
        decode program's number is its sequence's row, and programs start roughly in number
        order, so longest first shortens the wave of long programs that ends the kernel."""
        print("decode_order", flush=True)
        for label, nh, kvh, hd, seq_lens in self.decode_shapes():
            orders = (("arrival order", seq_lens),
                      ("longest first", sorted(seq_lens, reverse=True)),
                      ("shortest first", sorted(seq_lens)))
            for name, lens in (*orders, *orders[:2]):
                case = self.attention_inputs(label, nh, kvh, hd, [1] * len(lens), lens,
                                             heads_major=True)
                self.attention_row(case, f"[{name}]")
                del case
            if not self.smoke:
                self.torch.cuda.empty_cache()

    def prefill_chunk(self) -> None:
        """Prefill attention on one chunk of gpu_bench's (c) (whole prompts of 100-300 tokens
        filling a 16,384-token step) and on longer prompts, at the default tiles and others
        (128 x 64 of 8 warps: the default before session 9)."""
        print("prefill_chunk", flush=True)
        rng = random.Random(1)
        budget, lens = (64, 6) if self.smoke else (16_384, 100)
        chunk: list[int] = []
        while sum(chunk) < budget:
            chunk.append(min(rng.randint(lens, 3 * lens), budget - sum(chunk)))
        nh, kvh, hd = (4, 2, 64) if self.smoke else (32, 8, 128)
        shapes = [(f"(c) prefill {len(chunk)}x~{budget // len(chunk)}", chunk)]
        if not self.smoke:
            shapes += [(f"llama3 prefill {n}x{4096 // n}", [4096 // n] * n) for n in (8, 4, 2, 1)]
        group_pad = 1 << (nh // kvh - 1).bit_length()
        for label, q_lens in shapes:
            case = self.attention_inputs(label, nh, kvh, hd, q_lens, q_lens, heads_major=True)
            self.attention_row(case, "[default tiles]")
            for bm, bn, warps, stages in ((128, 64, 8, 2), (64, 32, 4, 2), (64, 64, 4, 2),
                                          (64, 32, 4, 3)):
                override = {"block_m": bm, "block_q": bm // group_pad, "block_n": bn,
                            "num_warps": warps, "num_stages": stages}
                self.attention_row(case, f"[BM={bm} BN={bn} w={warps} s={stages}]",
                                   launch_override=override)
            self.attention_row(case, "[default tiles]")
            del case
            if not self.smoke:
                self.torch.cuda.empty_cache()

    # ---- tuning sweeps ---------------------------------------------------------------------
    def sweep(self) -> None:
        """Split-KV factors and tile sizes around the heuristic's choice (for tuning it)."""
        print("sweep (num_kv_splits, tiles)", flush=True)
        decode = [("llama3-8b decode 64x8192", 32, 8, 128, [1] * 64, [8192] * 64),
                  ("llama3-8b decode 8x4096", 32, 8, 128, [1] * 8, [4096] * 8),
                  # gpu_bench (a): batch 1 after a 512-token prompt
                  ("llama3-8b decode 1x640", 32, 8, 128, [1], [640]),
                  # gpu_bench (b)-like: many mid-length sequences
                  ("qwen3-0.6b decode 256x1024", 16, 8, 128, [1] * 256, [1024] * 256),
                  # gpu_bench (c)-like: hundreds of short conversations
                  ("llama3-8b decode 256x512", 32, 8, 128, [1] * 256, [512] * 256)]
        prefill = [("llama3-8b prefill 1x4096", 32, 8, 128, [4096], [4096]),
                   ("llama3-8b prefill 8x512", 32, 8, 128, [512] * 8, [512] * 8)]
        prefill_tiles = [(128, 64, 8, 2), (128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3),
                         (64, 64, 4, 3), (64, 128, 4, 2), (128, 32, 4, 3)]
        if self.smoke:
            decode = [("tiny decode", 4, 2, 64, [1, 1], [40, 70])]
            prefill = [("tiny prefill", 4, 2, 64, [24], [24])]
            prefill_tiles = [(32, 16, 4, 2), (64, 32, 4, 3)]
        for shape in decode:
            case = self.attention_inputs(*shape)
            for splits in (1, 2, 3, 4, 6, 8, 10, 16):
                self.attention_row(case, f"[splits={splits}]", num_kv_splits=splits)
            for bn, stages, warps in ((32, 2, 2), (64, 3, 4), (64, 2, 4), (64, 2, 2),
                                      (64, 2, 8), (128, 2, 4), (128, 2, 8), (128, 3, 8)):
                self.attention_row(case, f"[BN={bn} s={stages} w={warps}]",
                                   launch_override={"block_n": bn, "num_stages": stages,
                                                    "num_warps": warps})
        for shape in prefill:
            case = self.attention_inputs(*shape)
            group_pad = 1 << (case.nh // case.kvh - 1).bit_length()
            for bm, bn, warps, stages in prefill_tiles:
                override = {"block_m": bm, "block_q": bm // group_pad, "block_n": bn,
                            "num_warps": warps, "num_stages": stages}
                self.attention_row(case, f"[BM={bm} BN={bn} w={warps} s={stages}]",
                                   launch_override=override)


def print_table(rows: list[Row], device_name: str, seconds: float) -> None:
    header = (f"{'kernel':<22} {'shape':<40} {'rel err':>8} {'ok':>3} {'time us':>10} "
              f"{'GB/s':>8} {'%HBM':>6} {'TFLOP/s':>8}  notes")
    print()
    print(f"Triton kernels on {device_name}  (HBM roofline {HBM_BYTES_PER_S / 1e12:.2f} TB/s, "
          f"bf16 peak {PEAK_BF16_FLOPS / 1e12:.0f} TFLOP/s; total {seconds:.0f} s)")
    print(header)
    print("-" * len(header))
    for r in rows:
        err = f"{r.error:.1e}" if r.error is not None else "-"
        ok = {True: "yes", False: "NO", None: "-"}[r.ok]
        if r.ms:
            gbs = r.bytes_moved / (r.ms * 1e-3) / 1e9
            pct = f"{100 * gbs * 1e9 / HBM_BYTES_PER_S:5.1f}%"
            tflops = f"{r.flops / (r.ms * 1e-3) / 1e12:8.1f}" if r.flops else "-"
            cols = f"{r.ms * 1e3:10.1f} {gbs:8.0f} {pct:>6} {tflops:>8}"
        else:
            cols = f"{'-':>10} {'-':>8} {'-':>6} {'-':>8}"
        print(f"{r.kernel:<22} {r.shape[:40]:<40} {err:>8} {ok:>3} {cols}  {r.note}")


if __name__ == "__main__":
    sys.exit(main())
