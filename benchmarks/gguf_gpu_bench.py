"""GGUF blocks on the GPU (kernels/triton/gguf.py, gguf_gemv.py, backends/cuda/gguf.py), measured.

Usage (GPU machine): python benchmarks/gguf_gpu_bench.py [--only kernels gemv q8 fused repacked
        e2e default]
        [--hf] [--types Q4_K ...] [--gemv-types Q4_K ...] [--q8-types Q4_K ...] [--rows 1 16 ...]
        (CPU smoke run, interpreter, tiny shapes): python benchmarks/gguf_gpu_bench.py --smoke

- kernels: `gguf_linear` on Llama-3-8B projection shapes in Q4_K, Q6_K and Q8_0 at 1-32 rows,
  `do_bench` medians, against the same product on a bf16 weight (F.linear, and the decode
  gemvs the backend uses for 1-8 rows); GB/s of the blocks read and the fraction of the
  board's measured copy bandwidth.
- gemv: the one-row kernel (gguf_gemv.py) on the same shapes for every type it reads, over a
  sweep of tiles (rows a program, super-blocks a step, warps; GGUF_GEMV_TILES), beside
  gguf_matmul at one row and the bf16 vector gemv.
- q8: the int8 few-row kernel (gguf_q8.py: x quantized to int8, int8 dots) at 2-32 rows over
  a sweep of tiles (GGUF_Q8_TILES), beside gguf_matmul and bf16, its quantization of x timed
  alone; checked against x rounded to int8 (tight) and x itself (loose).
- fused: what quantizing x inside the RMSNorm and the gated activation that produce it saves
  (`rms_norm_q8`, `act_and_mul_q8` against each op then `quantize_q8`; Llama-3-8B's hidden
  and intermediate sizes, 2-32 rows, CUDA graphs; checked bit for bit).
- repacked: the experiment of gguf_repacked.py (Q4_K repacked at load: contiguous codes, fp32
  group scales, two K=32 dots a step) beside gguf_linear and bf16 cuBLAS, same shapes.
- e2e: a random GGUF of Llama-3.1-8B's shapes in Q4_K_M's type mix (Q4_K; Q6_K for v, down and
  the LM head; 5.2 GB) written to a temporary folder, served by the engine: issue 6's (a)
  (batch 1, a 512-token prompt, 128 greedy tokens, decode tok/s = 127 / (total - TTFT)) and
  the same for 4 and 16 sequences; beside it the bf16 dummy model of the same shapes (the backend's
  float path) in the same run. Roofline: measured bandwidth / bytes of weights read per token.
- default: the default model (Gemma 3 270M Q4_K_M) at batch 1 with its blocks kept
  (LOCALSERVE_GGUF_BLOCKS=1) and dequantized to bf16 at load (=0); --hf adds HF transformers'
  generate() on the same GGUF (dequantized by transformers) as the in-run peer.
A table is printed last.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from functools import partial

import numpy as np
from gpu_bench import release, timed_decode  # this folder's module

HERE = os.path.dirname(os.path.abspath(__file__))
LLAMA = os.path.join(HERE, "configs", "llama-3.1-8b", "config.json")
ROWS = (1, 4, 8, 16, 32)


def random_blocks(qtype: int, rows: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Random raw blocks [rows, row_bytes] whose values stay near N(0, 0.02) in size, so a
    32-layer forward pass of them stays finite (the codes are random; the scales are set)."""
    from gguf import GGML_QUANT_SIZES
    from gguf import GGMLQuantizationType as Q

    values, size = GGML_QUANT_SIZES[Q(qtype)]
    blocks = rng.integers(0, 256, (rows, k // values, size), dtype=np.uint8)

    def fp16(at: int, lo: float, hi: float) -> None:
        d = rng.uniform(lo, hi, (rows, k // values, 1)).astype(np.float16)
        blocks[..., at:at + 2] = d.view(np.uint8)

    if qtype in (Q.Q4_K, Q.Q5_K):
        fp16(0, 1e-5, 4e-5)  # d
        fp16(2, 1e-5, 4e-5)  # dmin
    elif qtype == Q.Q6_K:
        fp16(208, 1e-5, 2e-5)
    else:  # 32-value blocks: d first
        fp16(0, 1e-3, 3e-3)
    return blocks.reshape(rows, -1)


def write_random_gguf(config_path: str, path: str, seed: int = 0) -> int:
    """A llama GGUF of config.json's shapes in Q4_K_M's type mix; returns its bytes."""
    import json

    import gguf
    from gguf import GGMLQuantizationType as Q

    with open(config_path) as f:
        c = json.load(f)
    rng = np.random.default_rng(seed)
    hidden, inter, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    heads, kv_heads = c["num_attention_heads"], c["num_key_value_heads"]
    head_dim = hidden // heads
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("random-q4_k_m")
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(c["rope_theta"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)

    def blocks(name: str, qtype: int, rows: int, k: int) -> None:
        if k % 256:  # a row K-quants cannot hold: Q8_0, as llama.cpp falls back
            qtype = Q.Q8_0
        w.add_tensor(name, random_blocks(qtype, rows, k, rng), raw_dtype=qtype)

    ones = np.ones(hidden, np.float32)
    blocks("token_embd.weight", Q.Q4_K, c["vocab_size"], hidden)
    blocks("output.weight", Q.Q6_K, c["vocab_size"], hidden)
    w.add_tensor("output_norm.weight", ones)
    for i in range(layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", ones)
        w.add_tensor(p + "ffn_norm.weight", ones)
        blocks(p + "attn_q.weight", Q.Q4_K, heads * head_dim, hidden)
        blocks(p + "attn_k.weight", Q.Q4_K, kv_heads * head_dim, hidden)
        blocks(p + "attn_v.weight", Q.Q6_K, kv_heads * head_dim, hidden)
        blocks(p + "attn_output.weight", Q.Q4_K, hidden, heads * head_dim)
        blocks(p + "ffn_gate.weight", Q.Q4_K, inter, hidden)
        blocks(p + "ffn_up.weight", Q.Q4_K, inter, hidden)
        blocks(p + "ffn_down.weight", Q.Q6_K, hidden, inter)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return os.path.getsize(path)


def token_ids_only() -> None:
    """The random GGUF has no tokenizer: the engine takes token ids, as for dummy weights."""
    from localserve.engine import factory
    from localserve.engine.id_tokenizer import IdTokenizer

    factory._tokenizer = lambda config, runner, load: IdTokenizer(runner.spec.vocab_size,
                                                                  frozenset())


def decode_rate(llm, prompts: list[list[int]]) -> tuple[float, float]:
    """(decode tok/s per sequence, TTFT s), timed as gpu_bench.py's (a)."""
    ttft, total, _ = timed_decode(llm, prompts, "gguf")
    return 127 / (total - ttft), ttft


def projections(args) -> tuple[object, object, dict[str, tuple[int, int]]]:
    """(device, dtype, {name: (N, K)}): Llama-3-8B's projections in bf16 on the GPU; one tiny
    shape in fp16 under --smoke (the interpreter has no bf16 dot)."""
    import torch

    if args.smoke:
        return torch.device("cpu"), torch.float16, {"tiny": (64, 512)}
    return torch.device("cuda"), torch.bfloat16, {
        "qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}


def checked(label: str, out, ref, tol: float) -> float:
    """max |out - ref| / max |ref|; exits with `label` if above `tol`."""
    err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
    if not err <= tol:
        raise SystemExit(f"{label} is wrong: relative error {err}")
    return err


def print_sweep(label: str, times: dict[tuple[int, ...], float]) -> None:
    """One line: every tile of a sweep, fastest first, in µs."""
    print(f"{label}: " + ", ".join(f"{'/'.join(map(str, tile))} {t * 1e6:.1f}" for tile, t in
                                   sorted(times.items(), key=lambda kv: kv[1])), flush=True)


def do_bench_s(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn) * 1e-3


def bench_kernels(args, bw: float, table: list[tuple[str, ...]]) -> None:
    import torch
    import torch.nn.functional as F
    from gguf import GGMLQuantizationType as Q

    from localserve.kernels.triton.gemv import gemv
    from localserve.kernels.triton.gguf import gguf_linear, gguf_matmul
    from localserve.kernels.triton.vector_gemv import vector_gemv
    from localserve.quant.gguf import dequantize

    dev, dtype, shapes = projections(args)
    rng = np.random.default_rng(0)
    for qtype in (Q[t] for t in args.types):
        for name, (n, k) in shapes.items():
            raw = torch.from_numpy(random_blocks(qtype, n, k, rng)).to(dev)
            w = dequantize(raw, qtype).to(dev, dtype)
            for m in args.rows if not args.smoke else (1, 32):
                x = torch.randn(m, k, device=dev).to(dtype)
                if args.smoke:  # correctness only: the interpreter's timings mean nothing
                    err = checked("gguf_linear", gguf_linear(x, raw, qtype),
                                  F.linear(x.float(), w.float()), 2e-3)  # fp16 rounding
                    table.append((f"{qtype.name} {name} {m} rows", f"relative error {err:.2g}",
                                  "", ""))
                    continue
                t = do_bench_s(partial(gguf_linear, x, raw, qtype))
                floats = (vector_gemv if m == 1 else gemv if m <= 8 else F.linear)
                tf = do_bench_s(partial(floats, x, w))
                gbs = (raw.numel() + x.numel() * 2) / t
                narrow = ""
                if m <= 16:  # the next tile to try: 16 columns, twice the programs
                    t16 = do_bench_s(partial(gguf_matmul, x, raw, qtype, 16))
                    narrow = f"16 columns {t16 * 1e6:.1f} µs"
                table.append((f"{qtype.name} {name} {n}x{k}, {m} rows", f"{t * 1e6:.1f} µs",
                              f"{gbs / 1e9:.0f} GB/s ({gbs / bw:.0%})",
                              f"bf16 {tf * 1e6:.1f} µs ({tf / t:.2f}x)", narrow))


# (rows a program, super-blocks a step, warps, shares of K); GGUF_GEMV_TILES="8/2/4/1 ..."
# overrides.
GEMV_TILES = tuple(tuple(map(int, t.split("/"))) for t in os.environ.get(
    "GGUF_GEMV_TILES", "8/2/4/1 8/4/4/1 8/2/4/2 8/4/4/2 16/2/4/2 16/4/4/4 32/2/4/4 32/4/4/4 "
    "32/2/4/8 64/2/4/8 64/4/4/8 32/1/2/1").split())


def bench_gemv(args, bw: float, table: list[tuple[str, ...]]) -> None:
    """gguf_gemv over GEMV_TILES against gguf_matmul (one row) and the bf16 vector gemv."""
    import torch
    from gguf import GGMLQuantizationType as Q

    from localserve.kernels.triton.gguf import gguf_matmul
    from localserve.kernels.triton.gguf_gemv import gguf_gemv
    from localserve.kernels.triton.vector_gemv import vector_gemv
    from localserve.quant.gguf import dequantize

    dev, dtype, shapes = projections(args)
    rng = np.random.default_rng(0)
    tiles = GEMV_TILES if not args.smoke else ((8, 1, 4, 1), (8, 1, 4, 3))
    for qtype in (Q[t] for t in args.gemv_types):
        for name, (n, k) in shapes.items():
            raw = torch.from_numpy(random_blocks(qtype, n, k, rng)).to(dev)
            w = dequantize(raw, qtype).to(dev)
            x = torch.randn(1, k, device=dev).to(dtype)
            ref = x.float() @ w.t()
            times = {}
            for tile in tiles:
                run = partial(gguf_gemv, x, raw, qtype, *tile)
                err = checked(f"gguf_gemv {qtype.name} {name} {tile}", run(),
                              ref, 2e-2 if dtype != torch.float16 else 2e-3)
                times[tile] = do_bench_s(run) if not args.smoke else err
            if args.smoke:
                table.append((f"gemv {qtype.name} {name}", "relative error "
                              + ", ".join(f"{e:.2g}" for e in times.values()), "", ""))
                continue
            best = min(times, key=times.get)
            t, t_default = times[best], do_bench_s(partial(gguf_gemv, x, raw, qtype))
            t_dot = do_bench_s(partial(gguf_matmul, x, raw, qtype))
            t_bf16 = do_bench_s(partial(vector_gemv, x, w.to(dtype)))
            gbs = (raw.numel() + 2 * k) / t_default
            table.append((f"gemv {qtype.name} {name} {n}x{k}", f"{t_default * 1e6:.1f} µs",
                          f"{gbs / 1e9:.0f} GB/s ({gbs / bw:.0%})",
                          f"best tile {'/'.join(map(str, best))} {t * 1e6:.1f} µs",
                          f"gguf_matmul {t_dot * 1e6:.1f} µs ({t_dot / t_default:.1f}x)",
                          f"bf16 gemv {t_bf16 * 1e6:.1f} µs ({t_bf16 / t_default:.2f}x)"))
            print_sweep(f"gemv {qtype.name} {name}", times)


# (rows of W a program, 64-value parts a step, warps, stages, shares of K; 0:
# gguf_q8.split_for's); GGUF_Q8_TILES overrides.
Q8_TILES = tuple(tuple(map(int, t.split("/"))) for t in os.environ.get(
    "GGUF_Q8_TILES", "128/1/4/2/0 128/4/4/2/0 128/2/4/3/0 64/1/4/2/0 64/4/4/2/0 64/2/4/3/0 "
    "32/1/4/2/0 32/4/4/2/0 32/4/4/3/0 128/4/8/2/0 64/4/4/2/1 16/4/4/2/0").split())


def graph_bench_s(fn) -> float:
    """Seconds a call, replayed in a CUDA graph as decode steps run (no launch overhead)."""
    from triton.testing import do_bench_cudagraph

    return do_bench_cudagraph(fn) * 1e-3


def bench_q8(args, bw: float, table: list[tuple[str, ...]]) -> None:
    """gguf_q8_matmul (2-32 rows, x quantized to int8) over Q8_TILES against gguf_matmul and
    bf16 (the gemv up to 8 rows, cuBLAS above), on the same shapes, all timed in CUDA graphs
    (each launch of these is shorter than Python's launch overhead); its error against x
    rounded to int8 first (the kernel's contract) and against x itself."""
    import torch
    import torch.nn.functional as F
    from gguf import GGMLQuantizationType as Q

    from localserve.kernels import reference
    from localserve.kernels.triton.gemv import gemv
    from localserve.kernels.triton.gguf import gguf_matmul
    from localserve.kernels.triton.gguf_q8 import gguf_q8_matmul
    from localserve.kernels.triton.quantize import quantize_q8
    from localserve.quant.gguf import dequantize

    dev, dtype, shapes = projections(args)
    rng = np.random.default_rng(0)
    tiles = Q8_TILES if not args.smoke else ((32, 2, 4, 1, 0), (32, 1, 4, 1, 3))
    rows = [m for m in args.rows if m > 1] if not args.smoke else (2, 17)
    for qtype in (Q[t] for t in args.q8_types):
        for name, (n, k) in shapes.items():
            raw = torch.from_numpy(random_blocks(qtype, n, k, rng)).to(dev)
            w = dequantize(raw, qtype).to(dev)
            wb = w.to(dtype)
            for m in rows:
                x = torch.randn(m, k, device=dev).to(dtype)
                ref_q8, ref = reference.gguf_q8_matmul(x, w), x.float() @ w.t()
                times, err_x = {}, 0.0
                for tile in tiles:
                    bn, parts, warps, stages, splits = tile
                    run = partial(gguf_q8_matmul, x, raw, qtype, bn, parts, warps, stages,
                                  splits or None)
                    out = run()
                    # bf16 output rounding (2^-9) with room; fp16 smoke: 2^-11
                    checked(f"gguf_q8_matmul {qtype.name} {name} {m} {tile}", out, ref_q8,
                            1e-2 if dtype != torch.float16 else 2e-3)
                    err_x = max(err_x, checked("gguf_q8_matmul against x", out, ref, 5e-2))
                    times[tile] = graph_bench_s(run) if not args.smoke else 0.0
                if args.smoke:
                    table.append((f"q8 {qtype.name} {name} {m} rows",
                                  f"max error against x {err_x:.2g}", "", ""))
                    continue
                best = min(times, key=times.get)
                t = graph_bench_s(partial(gguf_q8_matmul, x, raw, qtype))
                t_quant = graph_bench_s(partial(quantize_q8, x))
                t_dot = graph_bench_s(partial(gguf_matmul, x, raw, qtype))
                t_bf16 = graph_bench_s(partial(gemv if m <= 8 else F.linear, x, wb))
                gbs = raw.numel() / t
                table.append((f"q8 {qtype.name} {name} {n}x{k}, {m} rows", f"{t * 1e6:.1f} µs",
                              f"{gbs / 1e9:.0f} GB/s ({gbs / bw:.0%})",
                              f"best {'/'.join(map(str, best))} {times[best] * 1e6:.1f} µs",
                              f"of it quantize {t_quant * 1e6:.1f} µs",
                              f"gguf_matmul {t_dot * 1e6:.1f} µs ({t_dot / t:.2f}x)",
                              f"bf16 {t_bf16 * 1e6:.1f} µs ({t_bf16 / t:.2f}x)",
                              f"error vs x {err_x:.2g}"))
                print_sweep(f"q8 {qtype.name} {name} {m}", times)


def bench_fused(args, bw: float, table: list[tuple[str, ...]]) -> None:
    """An RMSNorm (with the residual add) over Llama-3-8B's hidden size and SiLU-and-mul over
    its intermediate size, each then quantize_q8 (two launches) against the fused `_q8`
    kernel (one), at 2-32 rows; the outputs must agree bit for bit."""
    import torch

    from localserve.kernels.triton.activation import act_and_mul, act_and_mul_q8
    from localserve.kernels.triton.norm import rms_norm, rms_norm_q8
    from localserve.kernels.triton.quantize import quantize_q8

    dev, dtype, _ = projections(args)
    hidden, inter = (4096, 14336) if not args.smoke else (64, 96)
    w = torch.randn(hidden, device=dev).to(dtype)

    def norm_then_quantize(x, r):
        out, _ = rms_norm(x, w, 1e-5, r)
        return out, quantize_q8(out)

    def norm_q8(x, r):
        out, _, q8 = rms_norm_q8(x, w, 1e-5, r)
        return out, q8

    def act_then_quantize(g):
        out = act_and_mul(g, "silu")
        return out, quantize_q8(out)

    for m in [m for m in args.rows if m > 1] if not args.smoke else (3,):
        x, r = (torch.randn(m, hidden, device=dev).to(dtype) for _ in range(2))
        g = torch.randn(m, 2 * inter, device=dev).to(dtype)
        cases = (("RMSNorm + residual", partial(norm_then_quantize, x, r), partial(norm_q8, x, r)),
                 ("SiLU-and-mul", partial(act_then_quantize, g),
                  partial(act_and_mul_q8, g, "silu")))
        for label, apart, fused in cases:
            (out, q8), (f_out, f_q8) = apart(), fused()
            if not all(torch.equal(a, b) for a, b in zip((out, *q8), (f_out, *f_q8), strict=True)):
                raise SystemExit(f"{label} {m} rows: the fused int8 output differs")
            if args.smoke:
                table.append((f"fused {label} {m} rows", "bit for bit", "", ""))
                continue
            t_apart, t_fused = graph_bench_s(apart), graph_bench_s(fused)
            table.append((f"fused {label}, {m} rows", f"then quantize_q8 {t_apart * 1e6:.1f} µs",
                          f"fused {t_fused * 1e6:.1f} µs ({t_apart / t_fused:.2f}x)", ""))


def bench_repacked(args, bw: float, table: list[tuple[str, ...]]) -> None:
    """The repacked-Q4_K experiment (gguf_repacked.py) beside gguf_linear and bf16."""
    import torch
    import torch.nn.functional as F
    from gguf import GGMLQuantizationType as Q
    from gguf_repacked import repack_q4_k, repacked_matmul  # this folder's module

    from localserve.kernels.triton.gguf import gguf_linear
    from localserve.quant.gguf import dequantize

    dev, dtype, shapes = projections(args)
    rng = np.random.default_rng(0)
    for name, (n, k) in shapes.items():
        raw = torch.from_numpy(random_blocks(Q.Q4_K, n, k, rng)).to(dev)
        w = dequantize(raw, Q.Q4_K).to(dev, dtype)
        packed = repack_q4_k(raw)
        for m in args.rows if not args.smoke else (1, 20):
            x = torch.randn(m, k, device=dev).to(dtype)
            err = checked("repacked Q4_K", repacked_matmul(x, packed),
                          F.linear(x.float(), w.float()), 2e-2)  # bf16 rounding, with room
            if args.smoke:
                table.append((f"repacked Q4_K {name} {m} rows", f"relative error {err:.2g}",
                              "", ""))
                continue
            t = do_bench_s(partial(repacked_matmul, x, packed))
            t_raw = do_bench_s(partial(gguf_linear, x, raw, Q.Q4_K))
            t_bf16 = do_bench_s(partial(F.linear, x, w))
            moved = sum(p.numel() * p.element_size() for p in packed)
            table.append((f"repacked Q4_K {name} {n}x{k}, {m} rows", f"{t * 1e6:.1f} µs",
                          f"{moved / t / 1e9:.0f} GB/s ({moved / t / bw:.0%})",
                          f"raw blocks {t_raw * 1e6:.1f} µs, bf16 cuBLAS {t_bf16 * 1e6:.1f} µs"))


def bench_e2e(args, bw: float, table: list[tuple[str, ...]]) -> None:
    from localserve import LLM

    token_ids_only()
    rng = random.Random(0)
    prompt = [rng.randint(0, 10000) for _ in range(512)]
    batch = [[rng.randint(0, 10000) for _ in range(512)] for _ in range(16)]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "random-q4_k_m.gguf")
        t = time.perf_counter()
        size = write_random_gguf(LLAMA, path)
        print(f"wrote {size / 1e9:.2f} GB in {time.perf_counter() - t:.1f} s", flush=True)
        os.environ["LOCALSERVE_GGUF_BLOCKS"] = "1"
        for label, model, opts in (("Q4_K_M blocks", path, {}),
                                   ("bf16 (dummy)", LLAMA, {"load_format": "dummy"})):
            t = time.perf_counter()
            llm = LLM(model, backend="cuda", max_model_len=4096, max_num_seqs=32, **opts)
            start = time.perf_counter() - t
            weights = llm.engine.runner.weight_bytes
            rate, ttft = decode_rate(llm, [prompt])
            rate4, _ = decode_rate(llm, batch[:4])
            rate16, _ = decode_rate(llm, batch)
            roof = bw / weights
            table.append((f"8B {label}: batch 1", f"{rate:.1f} tok/s, TTFT {ttft * 1e3:.1f} ms",
                          f"{rate / roof:.0%} of {roof:.0f} ({weights / 1e9:.2f} GB)",
                          f"start {start:.1f} s"))
            table.append((f"8B {label}: 4 sequences", f"{4 * rate4:.0f} tok/s", "", ""))
            table.append((f"8B {label}: 16 sequences", f"{16 * rate16:.0f} tok/s", "", ""))
            release(llm)
            del llm


def bench_default(args, bw: float, table: list[tuple[str, ...]]) -> None:
    from localserve import LLM, SamplingParams
    from localserve.config import default_model_path

    rng = random.Random(0)
    prompt = [rng.randint(0, 10000) for _ in range(512)]
    for label, blocks in (("blocks kept", "1"), ("dequantized to bf16", "0")):
        os.environ["LOCALSERVE_GGUF_BLOCKS"] = blocks
        llm = LLM(None, backend="cuda")
        rate, ttft = decode_rate(llm, [prompt])
        weights = llm.engine.runner.weight_bytes
        out = llm.generate([prompt], SamplingParams(max_tokens=16, temperature=0,
                                                    ignore_eos=True))[0].outputs[0].token_ids
        table.append((f"default model, {label}: batch 1", f"{rate:.1f} tok/s, TTFT "
                      f"{ttft * 1e3:.1f} ms", f"{rate / (bw / weights):.0%} of "
                      f"{bw / weights:.0f} ({weights / 1e6:.0f} MB)", f"first ids {out[:6]}"))
        release(llm)
        del llm
    os.environ.pop("LOCALSERVE_GGUF_BLOCKS")
    if args.hf:
        import torch
        from transformers import AutoModelForCausalLM

        path = default_model_path()
        model = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(path), gguf_file=os.path.basename(path),
            dtype=torch.bfloat16).cuda().eval()
        ids = torch.tensor([prompt], device="cuda")
        with torch.no_grad():
            for _ in range(2):
                model.generate(ids, max_new_tokens=8, do_sample=False)
            times = {}
            for n in (1, 128):
                torch.cuda.synchronize()
                t = time.perf_counter()
                model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
                torch.cuda.synchronize()
                times[n] = time.perf_counter() - t
        table.append(("default model, HF generate (peer)",
                      f"{127 / (times[128] - times[1]):.1f} tok/s", "", ""))


def smoke_random_gguf(table: list[tuple[str, ...]]) -> None:
    """The e2e model's writer, at tiny shapes, read back by the CPU backend (its C kernels
    take Q4_K and Q6_K as they are)."""
    from localserve import LLM, SamplingParams

    token_ids_only()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "random-q4_k_m.gguf")
        size = write_random_gguf(os.path.join(HERE, "configs", "tiny-llama", "config.json"),
                                 path)
        llm = LLM(path, backend="cpu", max_model_len=64)
        out = llm.generate([[1, 2, 3]], SamplingParams(max_tokens=4, temperature=0,
                                                       ignore_eos=True))[0].outputs[0].token_ids
        llm.engine.shutdown()
    table.append(("random Q4_K_M GGUF, tiny shapes, cpu backend", f"{size} bytes",
                  f"generated {out}", ""))


class Table(list):
    """The final table's rows, each also printed as it comes (a run cut by a time limit keeps
    what it measured in its log)."""

    def append(self, row: tuple[str, ...]) -> None:
        print("row: " + "  ".join(c for c in row if c), flush=True)
        super().append(row)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", default=["kernels", "e2e", "default"],
                    choices=["kernels", "gemv", "q8", "fused", "repacked", "e2e", "default"])
    ap.add_argument("--hf", action="store_true")
    ap.add_argument("--types", nargs="*", default=["Q4_K", "Q6_K", "Q8_0"])
    ap.add_argument("--gemv-types", nargs="*",
                    default=["Q4_K", "Q6_K", "Q5_K", "Q8_0", "Q4_0", "Q5_0"])
    ap.add_argument("--q8-types", nargs="*", default=["Q4_K", "Q6_K", "Q5_K", "Q8_0"])
    ap.add_argument("--rows", nargs="*", type=int, default=list(ROWS))
    ap.add_argument("--smoke", action="store_true", help="CPU interpreter, tiny shapes")
    args = ap.parse_args()
    table: list[tuple[str, ...]] = Table()
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        bench_kernels(args, 1.0, table)
        bench_gemv(args, 1.0, table)
        bench_q8(args, 1.0, table)
        bench_fused(args, 1.0, table)
        bench_repacked(args, 1.0, table)
        smoke_random_gguf(table)
    else:
        import torch
        from gpu_probes import bandwidth_bytes_per_s  # this folder's module

        bw = bandwidth_bytes_per_s(torch.device("cuda"))
        print(f"{torch.cuda.get_device_name()}: copy bandwidth {bw / 1e9:.0f} GB/s", flush=True)
        sections = {"kernels": bench_kernels, "gemv": bench_gemv, "q8": bench_q8,
                    "fused": bench_fused, "repacked": bench_repacked, "e2e": bench_e2e,
                    "default": bench_default}
        for name in args.only:  # in the order given: what must not be cut by a time limit first
            sections[name](args, bw, table)
    width = max(len(r[0]) for r in table)
    for row in table:
        print(f"{row[0]:<{width}}  " + "  ".join(c for c in row[1:] if c))


if __name__ == "__main__":
    main()
