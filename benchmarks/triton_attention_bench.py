"""Paged attention sections of benchmarks/triton_kernels.py: the model shapes against torch
SDPA, the decode batches of gpu_bench's (b) and (c) in their layouts, paths and orders, the
prefill chunks of (c), and the split-KV / tile sweeps."""

from __future__ import annotations

import random
from dataclasses import dataclass

from triton_bench_core import Bench, Row  # this folder's module


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


class AttentionSections:
    """The attention sections, adding their rows to `b`."""

    def __init__(self, b: Bench) -> None:
        self.b = b

    def attention_shapes(self) -> list[tuple[str, int, int, int, list[int], list[int]]]:
        """(label, num_heads, num_kv_heads, head_dim, q_lens, seq_lens)."""
        if self.b.smoke:
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
            if not self.b.smoke:
                self.sdpa_peer(case, row)
                del case
                self.b.torch.cuda.empty_cache()

    def attention_inputs(self, label: str, nh: int, kvh: int, hd: int, q_lens: list[int],
                         seq_lens: list[int], heads_major: bool = False) -> AttentionCase:
        batch = self.b.testing.make_paged_batch(q_lens, seq_lens, nh, kvh, hd, 16, self.b.dtype,
                                              self.b.dev, poison_unused=False,
                                              heads_major=heads_major)
        ref = self.b.ref.paged_attention(*batch.args(), hd ** -0.5)
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
            return self.b.k.paged_attention(*batch.args(), scale, num_kv_splits=num_kv_splits,
                                          **bounds)

        original = attn_mod.choose_launch
        if launch_override:  # tuning sweeps: force tile sizes through the launch choice
            attn_mod.choose_launch = lambda **kw: dataclasses.replace(original(**kw),
                                                                      **launch_override)
        try:
            spec = attn_mod.choose_launch(
                num_seqs=len(case.seq_lens), num_kv_heads=case.kvh, group=case.nh // case.kvh,
                head_dim=case.hd, num_sms=self.testing_num_sms(), num_kv_splits=num_kv_splits,
                elem_bytes=self.b.elem, **bounds)
            row = Row("paged_attention", f"{case.label} {variant}".strip())
            self.b.check(row, run(), case.ref, self.b.testing.ATTENTION_TOL[self.b.dtype])
            row.ms = self.b.time_ms(run)
        finally:
            attn_mod.choose_launch = original
        num_tokens, kv_tokens = sum(case.q_lens), sum(case.seq_lens)
        row.bytes_moved = (2 * num_tokens * case.nh * case.hd
                           + 2 * kv_tokens * case.kvh * case.hd) * self.b.elem
        pairs = sum(q * s - q * (q - 1) / 2
                    for q, s in zip(case.q_lens, case.seq_lens, strict=True))
        row.flops = 4.0 * pairs * case.nh * case.hd
        row.note = (f"BM={spec.block_m} BN={spec.block_n} splits={spec.num_splits} "
                    f"w={spec.num_warps} s={spec.num_stages}")
        self.b.add(row)
        return row

    def testing_num_sms(self) -> int:
        from localserve.kernels.triton._common import num_sms

        return num_sms(self.b.dev)

    def sdpa_peer(self, case: AttentionCase, ours: Row) -> None:
        """torch SDPA on dense K/V of the same shape (equal-length sequences only)."""
        torch = self.b.torch
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
            row.error = self.b.testing.rel_error(out, case.ref)
            row.ms = self.b.time_ms(run)
        except Exception as e:  # a peer that cannot run this shape is reported, not fatal
            row.note = f"unavailable: {type(e).__name__}"
        row.bytes_moved, row.flops = ours.bytes_moved, ours.flops
        if row.ms and ours.ms:
            row.note = f"paged_attention is {row.ms / ours.ms:.2f}x its speed"
        self.b.add(row)

    # ---- decode attention as the engine's steps call it --------------------------------------
    def decode_shapes(self) -> list[tuple[str, int, int, int, list[int]]]:
        """(label, heads, kv heads, head_dim, sequence lengths) like gpu_bench's (b), (c)."""
        rng = random.Random(0)
        if self.b.smoke:
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
            if not self.b.smoke:
                self.b.torch.cuda.empty_cache()

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
            if not self.b.smoke:
                self.b.torch.cuda.empty_cache()

    def overlap(self) -> None:
        """Does decode attention, bound by HBM bandwidth, run beside another half-batch's
        GEMMs, bound by the tensor cores and the power cap? (c)'s full decode steps run them
        one after the other (attention ~35% of a step). Two CUDA graphs do the same work for
        REPEAT layers of two 250-row halves of a (c)-like batch (Llama-3-8B shapes): one on a
        single stream, one with attention on a side branch beside the GEMMs. If the second
        is not clearly faster, micro-batch overlap cannot pay in the engine."""
        torch = self.b.torch
        F = torch.nn.functional
        print("overlap", flush=True)
        rng = random.Random(0)
        rows = 6 if self.b.smoke else 250
        nh, kvh, hd, hidden, inter = (4, 2, 64, 256, 96) if self.b.smoke else (32, 8, 128, 4096,
                                                                               14336)
        seq_lens = [rng.randint(5, 90) if self.b.smoke else rng.randint(150, 560)
                    for _ in range(rows)]
        case = self.attention_inputs(f"{rows} rows of (c)", nh, kvh, hd, [1] * rows, seq_lens)
        batch, scale = case.batch, hd ** -0.5
        bounds = {"max_query_len": 1, "max_seq_len": max(seq_lens)}
        dev, dt = self.b.dev, self.b.dtype
        x = torch.randn(rows, hidden, device=dev, dtype=dt)
        weights = [torch.randn(n, k, device=dev, dtype=dt) / k ** 0.5 for n, k in (
            ((nh + 2 * kvh) * hd, hidden), (hidden, nh * hd), (2 * inter, hidden),
            (hidden, inter))]

        def attention():
            self.b.k.paged_attention(*batch.args(), scale, **bounds)

        def gemms(x=x):
            F.linear(x, weights[0])
            F.linear(x, weights[1])
            gate_up = F.linear(x, weights[2])
            F.linear(gate_up[:, :inter], weights[3])

        whole = torch.randn(2 * rows, hidden, device=dev, dtype=dt)  # the unsplit batch

        repeat = 2 if self.b.smoke else 16
        if self.b.smoke:  # the interpreter has no streams or graphs: check the two parts run
            attention()
            gemms()
            gemms(whole)
            print(f"overlap: {case.label}: attention and GEMMs ran (no timing here)")
            return
        for part, fn in (("attention alone", attention), ("GEMMs alone", gemms),
                         (f"GEMMs of {2 * rows} rows", lambda: gemms(whole))):
            self.b.add(Row("overlap", f"{case.label}: {part}",
                           ms=self.b.time_ms(fn) * repeat, note=f"x{repeat}"))
        attention()
        gemms()
        torch.cuda.synchronize()
        side = torch.cuda.Stream()
        graphs = {}
        for mode in ("one stream", "attention beside the GEMMs"):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                if mode == "one stream":
                    for _ in range(repeat):
                        attention()
                        gemms()
                else:
                    side.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(side):
                        for _ in range(repeat):
                            attention()
                    for _ in range(repeat):
                        gemms()
                    torch.cuda.current_stream().wait_stream(side)
            graphs[mode] = graph
        for _ in range(2):  # alternate, so the power cap's state is shared
            for mode, graph in graphs.items():
                self.b.add(Row("overlap", f"{case.label}: {mode}",
                               ms=self.b.time_ms(graph.replay), note=f"x{repeat}, graph"))
        del case, graphs
        torch.cuda.empty_cache()

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
            if not self.b.smoke:
                self.b.torch.cuda.empty_cache()

    def prefill_chunk(self) -> None:
        """Prefill attention on one chunk of gpu_bench's (c) (whole prompts of 100-300 tokens
        filling a 16,384-token step) and on longer prompts, at the default tiles and others
        (128 x 64 of 8 warps: the default before session 9)."""
        from localserve.kernels.triton._common import next_pow2

        print("prefill_chunk", flush=True)
        rng = random.Random(1)
        budget, lens = (64, 6) if self.b.smoke else (16_384, 100)
        chunk: list[int] = []
        while sum(chunk) < budget:
            chunk.append(min(rng.randint(lens, 3 * lens), budget - sum(chunk)))
        nh, kvh, hd = (4, 2, 64) if self.b.smoke else (32, 8, 128)
        shapes = [(f"(c) prefill {len(chunk)}x~{budget // len(chunk)}", chunk)]
        if not self.b.smoke:
            shapes += [(f"llama3 prefill {n}x{4096 // n}", [4096 // n] * n) for n in (8, 4, 2, 1)]
        group_pad = next_pow2(nh // kvh)
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
            if not self.b.smoke:
                self.b.torch.cuda.empty_cache()

    # ---- tuning sweeps ---------------------------------------------------------------------
    def sweep(self) -> None:
        """Split-KV factors and tile sizes around the heuristic's choice (for tuning it)."""
        from localserve.kernels.triton._common import next_pow2

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
        if self.b.smoke:
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
            group_pad = next_pow2(case.nh // case.kvh)
            for bm, bn, warps, stages in prefill_tiles:
                override = {"block_m": bm, "block_q": bm // group_pad, "block_n": bn,
                            "num_warps": warps, "num_stages": stages}
                self.attention_row(case, f"[BM={bm} BN={bn} w={warps} s={stages}]",
                                   launch_override=override)
