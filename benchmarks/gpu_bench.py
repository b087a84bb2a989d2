"""GPU benchmarks of the cuda backend on real model shapes with dummy weights (issue 6).

Usage (on the GPU machine): python benchmarks/gpu_bench.py [--only a b c d] [--hf] [--quick]
        (on a CPU, a smoke run at tiny shapes): python benchmarks/gpu_bench.py --smoke

Workloads (model shapes from benchmarks/configs/*/config.json, bf16, max_model_len 4096,
prompts of random token ids):
 (a) Llama-3.1-8B, batch 1: 512-token prompt, 128 greedy tokens; decode tok/s = 127 / (total -
     TTFT), TTFT from a max_tokens=1 call (prefix-cache hits, as in the timed calls; the
     whole-prompt TTFT beside it); vs the bandwidth roofline (weight bytes per token).
 (b) Qwen3-0.6B, nano-vllm's workload: 256 prompts of 100-1024 ids, max_tokens 100-1024,
     temperature 0.6, all at once; throughput = sum(max_tokens) / wall time; fraction of the
     per-step roofline (weights + KV read per step / bandwidth).
 (c) Llama-3.1-8B, ShareGPT-like: 500 prompts of 100-300 ids, outputs 100-260, greedy.
 (d) start-up: engine construction to ready, cold.
 (a16) not an issue workload: (a) for 16 sequences at once.
A workload named with a variant (`--only c c:pow2 ...`) runs with one setting changed, for an
A/B in one process: the variants are listed in gpu_variants.py. The probes beside wall time
(--phases, --clocks, --kernel-table, compile counts) are in gpu_probes.py; for (a), --phases
and --clocks watch one or five more 128-token calls, outside the timed ones.
--hf adds HF transformers as the in-run peer: for (a) plain generate (dynamic cache); for (b)
its ContinuousBatchingManager on the first 32 requests, with localserve on the same 32.
A table is printed last.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import tempfile
import time

from gpu_probes import (  # this folder's modules
    Clocks,
    JitCompiles,
    Phases,
    StartupPhases,
    StepBytes,
    bandwidth_bytes_per_s,
    graph_routes,
    kernel_table,
)
from gpu_variants import variant_setting

HERE = os.path.dirname(os.path.abspath(__file__))
LLAMA = os.path.join(HERE, "configs", "llama-3.1-8b", "config.json")
QWEN = os.path.join(HERE, "configs", "qwen3-0.6b", "config.json")
HF_B_SUBSET = 32  # requests of (b) that HF's continuous batching runs (it needs minutes for 256)
VLLM = {"a": "152 tok/s (TTFT 17.7 ms)", "b": "17,854 tok/s", "c": "72.3 req/s, 13,047 tok/s",
        "d": "82 s"}


def make_llm(config: str, args: argparse.Namespace, **kw):
    from localserve import LLM

    opts = {"load_format": "dummy", "max_model_len": args.max_model_len, "backend": args.backend,
            "dtype": args.dtype, "async_scheduling": not args.no_async}
    opts.update(kw)
    return LLM(config, **opts)


def timed_decode(llm, prompts: list[list[int]], label: str) -> tuple[float, float, int]:
    """(TTFT, total seconds of 128 greedy tokens, JIT compiles inside) for `prompts` at once:
    the medians of three max_tokens=1 and three max_tokens=128 calls, after two warm-ups."""
    from localserve import SamplingParams

    g1 = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    g128 = SamplingParams(max_tokens=128, temperature=0, ignore_eos=True)
    for _ in range(2):  # warm-up: compile kernels, capture the batch-1 graph
        llm.generate(prompts, g128)
    ttfts, totals = [], []
    with JitCompiles() as jit:
        for _ in range(3):
            t = time.perf_counter()
            llm.generate(prompts, g1)
            ttfts.append(time.perf_counter() - t)
            t = time.perf_counter()
            llm.generate(prompts, g128)
            totals.append(time.perf_counter() - t)
    jit.report(label)
    return sorted(ttfts)[1], sorted(totals)[1], len(jit.names)


def whole_prompt_call(llm, prompts: list[list[int]]) -> float:
    """Seconds of one max_tokens=1 call with the prefix cache emptied first: the whole prompt
    prefilled. (timed_decode repeats one prompt with the cache on, so there all but its
    last block are prefix-cache hits, in the TTFT calls as in the 128-token ones.)"""
    from localserve import SamplingParams

    llm.engine.block_manager.reset_prefix_cache()
    t = time.perf_counter()
    llm.generate(prompts, SamplingParams(max_tokens=1, temperature=0, ignore_eos=True))
    return time.perf_counter() - t


def bench_a(args, results, table) -> None:
    from localserve import SamplingParams

    llm = make_llm(args.llama, args, max_num_seqs=8)
    rng = random.Random(0)
    prompt = [rng.randint(0, 10000) for _ in range(512)]
    print(f"(a) {graph_routes(llm)}", flush=True)
    ttft, total, compiles = timed_decode(llm, [prompt], "(a)")
    tok_s = 127 / (total - ttft)
    whole = sorted(whole_prompt_call(llm, [prompt]) for _ in range(3))[1]  # the median
    if args.phases or args.clocks:  # one more 128-token call, watched: does the GPU wait
        g128 = SamplingParams(max_tokens=128, temperature=0, ignore_eos=True)
        phases = Phases(llm) if args.phases else None  # for the host? at which SM clock?
        with Clocks() if args.clocks else contextlib.nullcontext() as clocks:
            for _ in range(1 if phases else 5):  # (nvidia-smi samples every 100 ms)
                t = time.perf_counter()
                llm.generate([prompt], g128)
                wall = time.perf_counter() - t
        if phases:
            phases.report(f"(a) {wall * 1e3:.1f} ms", wall)
        if clocks:
            clocks.report("(a)")
    if args.phases:  # and one whole-prompt prefill: how much of its TTFT is GPU time?
        phases = Phases(llm)
        wall = whole_prompt_call(llm, [prompt])
        phases.report(f"(a) whole-prompt TTFT {wall * 1e3:.1f} ms", wall)
    if args.kernel_table:  # (it empties the prefix cache first)
        kernel_table(llm, "(a) whole-prompt TTFT", [prompt],
                     SamplingParams(max_tokens=1, temperature=0, ignore_eos=True))
    runner = llm.engine.runner
    roofline = args.bw / runner.weight_bytes
    results["a"] = {"decode_tok_s": tok_s, "ttft_ms": ttft * 1e3,
                    "whole_prompt_ttft_ms": whole * 1e3, "roofline_tok_s": roofline,
                    "jit_compiles": compiles}
    table.append(("(a) 8B batch-1 decode", f"{tok_s:.1f} tok/s, TTFT {ttft * 1e3:.1f} ms "
                  f"(cached prefix; whole prompt {whole * 1e3:.1f} ms)",
                  f"{tok_s / roofline:.0%} of {roofline:.0f}", VLLM["a"]))
    release(llm)
    del llm
    if args.hf:
        hf = hf_batch1(args.llama, prompt)
        results["a"]["hf_tok_s"] = hf
        table.append(("(a) HF generate (peer)", f"{hf:.1f} tok/s", f"{hf / roofline:.0%}", ""))


def bench_a16(args, results, table) -> None:
    """(a) for 16 sequences at once (a small team on one server; not an issue workload):
    16 prompts of 512 ids, 128 greedy tokens each; decode tok/s = 16 * 127 / (total - TTFT)."""
    llm = make_llm(args.llama, args, max_num_seqs=16)
    rng = random.Random(0)
    prompts = [[rng.randint(0, 10000) for _ in range(512)] for _ in range(16)]
    print(f"(a16) {graph_routes(llm)}", flush=True)
    ttft, total, compiles = timed_decode(llm, prompts, "(a16)")
    tok_s = 16 * 127 / (total - ttft)
    roofline = args.bw / llm.engine.runner.weight_bytes  # steps a second, weights alone
    results["a16"] = {"decode_tok_s": tok_s, "ttft_ms": ttft * 1e3, "jit_compiles": compiles}
    table.append(("(a16) 8B, 16 sequences", f"{tok_s:,.0f} tok/s, TTFT {ttft * 1e3:.1f} ms",
                  f"{tok_s / 16 / roofline:.0%} of {roofline:.0f} steps/s", ""))
    release(llm)


def release(llm) -> None:
    """Frees the engine's GPU memory (KV pool, graphs) before the next workload."""
    import gc

    import torch

    llm.engine.shutdown()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def hf_batch1(config: str, prompt: list[int]) -> float:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(os.path.dirname(config))
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.eval()
    ids = torch.tensor([prompt], device="cuda")
    kw = {"do_sample": False, "min_new_tokens": 128, "max_new_tokens": 128}
    with torch.inference_mode():
        model.generate(ids, **kw)
        torch.cuda.synchronize()
        t = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False)
        torch.cuda.synchronize()
        ttft = time.perf_counter() - t
        t = time.perf_counter()
        model.generate(ids, **kw)
        torch.cuda.synchronize()
        total = time.perf_counter() - t
    del model
    torch.cuda.empty_cache()
    return 127 / (total - ttft)


def hf_continuous_batching(config: str, prompts: list[list[int]],
                           max_tokens: list[int]) -> float | None:
    """Output tok/s of HF transformers' ContinuousBatchingManager on the same requests (dummy
    weights, bf16, T = 0.6, EOS disabled), all submitted at once; None if it fails."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    try:  # a peer's failure must not lose our own figures
        cfg = AutoConfig.from_pretrained(os.path.dirname(config))
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
        model.eval()
        gen = GenerationConfig(do_sample=True, temperature=0.6, max_new_tokens=max(max_tokens),
                               eos_token_id=-1)
        manager = model.init_continuous_batching(generation_config=gen)
        manager.warmup()  # its CUDA graphs, captured outside the timing (as generate_batch does)
        manager.start()
        try:
            t = time.perf_counter()
            for ids, m in zip(prompts, max_tokens, strict=True):
                manager.add_request(ids, max_new_tokens=m)
            done = tokens = 0
            while done < len(prompts):
                out = manager.get_result(timeout=5)
                if out is None:
                    if not manager.is_running():
                        raise RuntimeError("its generation thread stopped early")
                    continue
                if out.is_finished():
                    done += 1
                    tokens += len(out.generated_tokens)
            wall = time.perf_counter() - t
        finally:
            manager.stop(block=True)
    except Exception as e:
        print(f"(b) HF continuous batching failed: {e!r}", flush=True)
        return None
    finally:
        torch.cuda.empty_cache()
    if tokens != sum(max_tokens):
        print(f"(b) HF generated {tokens} tokens, expected {sum(max_tokens)}", flush=True)
    return tokens / wall


def bench_b(args, results, table) -> None:
    from localserve import SamplingParams

    random.seed(0)
    n = 256 if not args.quick else 64
    prompts = [[random.randint(0, 10000) for _ in range(random.randint(100, 1024))]
               for _ in range(n)]
    params = [SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=random.randint(100, 1024))
              for _ in range(n)]
    llm = make_llm(args.qwen, args)  # batch limits: the engine's defaults for this GPU
    sched = llm.engine.config.scheduler
    print(f"(b) max_num_seqs {sched.max_num_seqs}, max_num_batched_tokens "
          f"{sched.max_num_batched_tokens}; {graph_routes(llm)}", flush=True)
    warm_up(llm, 100, 1024)
    counter = StepBytes(llm)
    phases = Phases(llm) if args.phases else None
    with JitCompiles() as jit:
        t = time.perf_counter()
        llm.generate(prompts, params)
        wall = time.perf_counter() - t
    if phases:
        phases.report(f"(b) {wall:.2f}s", wall)
    total = sum(p.max_tokens for p in params)
    frac = counter.bytes / args.bw / wall
    results["b"] = {"tok_s": total / wall, "wall_s": wall, "roofline_fraction": frac,
                    "steps": counter.steps, "jit_compiles": len(jit.names)}
    table.append(("(b) Qwen3-0.6B nano-vllm", f"{total / wall:,.0f} tok/s ({n} reqs)",
                  f"{frac:.0%} of per-step roofline; {jit.report('(b)')}", VLLM["b"]))
    if args.kernel_table:
        kernel_table(llm, "(b)", prompts, params)
    if args.hf:  # HF's continuous batching needs minutes for all 256: both on a subset
        k = HF_B_SUBSET
        llm.engine.block_manager.reset_prefix_cache()  # these prompts ran just now
        t = time.perf_counter()
        llm.generate(prompts[:k], params[:k])
        ours = sum(p.max_tokens for p in params[:k]) / (time.perf_counter() - t)
        release(llm)
        peer = hf_continuous_batching(args.qwen, prompts[:k], [p.max_tokens for p in params[:k]])
        results["b_subset"] = {"requests": k, "localserve_tok_s": ours, "hf_tok_s": peer}
        table.append((f"(b) first {k} requests", f"{ours:,.0f} tok/s",
                      f"HF ContinuousBatchingManager {peer:,.0f} tok/s" if peer else
                      "HF ContinuousBatchingManager failed (see log)", "HF: 619 tok/s (all 256)"))
        return
    release(llm)


def warm_up(llm, min_len: int, max_len: int) -> None:
    """Compiles the Triton kernels and captures the graphs this workload will use, on other
    prompts (a separate RNG), so no JIT work lands inside the timed run."""
    from localserve import SamplingParams

    rng = random.Random(12345)
    # As many prompts as the engine runs at once: every decode-graph bucket gets captured.
    n = llm.engine.config.scheduler.max_num_seqs
    prompts = [[rng.randint(0, 10000) for _ in range(rng.randint(min_len, max_len))]
               for _ in range(n)]
    # 64 tokens each: the first admitted are still running when the last join, so the batch
    # reaches max_num_seqs; the batch then shrinks through every bucket as they finish.
    llm.generate(prompts, [SamplingParams(max_tokens=64 - rng.randint(0, 16), temperature=0.6,
                                          ignore_eos=True) for _ in prompts])
    # Sequences finishing together can skip the smallest buckets: decode them on purpose.
    for batch in (1, 2, 4, 8):
        llm.generate(prompts[:batch], SamplingParams(max_tokens=4, temperature=0.6,
                                                     ignore_eos=True))
    llm.engine.block_manager.reset_prefix_cache()


def sharegpt_like(n: int) -> tuple[list[list[int]], list[int]]:
    """(c)'s prompts and output lengths: seed 1, then n prompts of 100-300 random ids, then n
    output lengths of 100-260."""
    rng = random.Random(1)
    prompts = [[rng.randint(0, 10000) for _ in range(rng.randint(100, 300))] for _ in range(n)]
    return prompts, [rng.randint(100, 260) for _ in range(n)]


def bench_c(args, results, table) -> None:
    from localserve import SamplingParams

    n = 500 if not args.quick else 100
    prompts, outs = sharegpt_like(n)
    params = [SamplingParams(temperature=0, ignore_eos=True, max_tokens=m) for m in outs]
    llm = make_llm(args.llama, args)  # batch limits: the engine's defaults for this GPU
    sched = llm.engine.config.scheduler
    print(f"(c) max_num_seqs {sched.max_num_seqs}, max_num_batched_tokens "
          f"{sched.max_num_batched_tokens}; {graph_routes(llm)}", flush=True)
    warm_up(llm, 100, 300)
    phases = Phases(llm) if args.phases else None
    with JitCompiles() as jit, (Clocks() if args.clocks else contextlib.nullcontext()) as clocks:
        t = time.perf_counter()
        llm.generate(prompts, params)
        wall = time.perf_counter() - t
    if phases:
        phases.report(f"(c) {wall:.2f}s", wall)
    if clocks:
        clocks.report(f"(c) {wall:.2f}s")
    results["c"] = {"req_s": n / wall, "out_tok_s": sum(outs) / wall,
                    "jit_compiles": len(jit.names)}
    table.append(("(c) 8B ShareGPT-like", f"{n / wall:.1f} req/s, {sum(outs) / wall:,.0f} tok/s",
                  jit.report("(c)"), VLLM["c"]))
    if args.kernel_table:
        kernel_table(llm, "(c)", prompts, params)
    release(llm)


def bench_d(args, results, table) -> None:
    """Cold: Triton compiles into an empty cache directory; warm: --triton-cache names one an
    earlier run filled (a user's second start). Kernels compiled earlier in this process stay
    compiled, so (d) belongs first in --only."""
    from unittest import mock

    if args.triton_cache:
        os.makedirs(args.triton_cache, exist_ok=True)
    warm = bool(args.triton_cache and os.listdir(args.triton_cache))
    cache = (contextlib.nullcontext(args.triton_cache) if args.triton_cache
             else tempfile.TemporaryDirectory())
    with (cache as cache_dir,
          mock.patch.dict(os.environ, TRITON_CACHE_DIR=cache_dir),  # read at each compile
          StartupPhases() if args.phases else contextlib.nullcontext()):
        t = time.perf_counter()
        llm = make_llm(args.llama, args)
        startup = time.perf_counter() - t
    results["d"] = {"startup_s": startup, "warm_triton_cache": warm}
    table.append((f"(d) 8B start-up ({'warm Triton cache' if warm else 'cold'})",
                  f"{startup:.1f} s", "", VLLM["d"]))
    release(llm)


def main() -> None:
    ap = argparse.ArgumentParser(description="GPU benchmarks (issue 6)")
    ap.add_argument("--only", nargs="+", default=["d", "a", "b", "c"])
    ap.add_argument("--hf", action="store_true")
    ap.add_argument("--no-async", action="store_true", help="step synchronously (A/B)")
    ap.add_argument("--phases", action="store_true",
                    help="host time per engine phase; (d): the start-up log and profile")
    ap.add_argument("--clocks", action="store_true",
                    help="(a), (c): nvidia-smi clocks and power")
    ap.add_argument("--kernel-table", action="store_true",
                    help="(a) whole-prompt TTFT, (b), (c): GPU time per kernel")
    ap.add_argument("--quick", action="store_true", help="smaller (b) and (c)")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, reference backend")
    ap.add_argument("--triton-cache", default=None, metavar="DIR",
                    help="(d): Triton's cache directory, kept (warm if an earlier run filled "
                         "it); default: a new empty one")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    args.llama, args.qwen = LLAMA, QWEN
    args.max_model_len, args.backend, args.dtype = 4096, "cuda", "bfloat16"
    import torch

    if args.smoke:
        args.llama = args.qwen = os.path.join(HERE, "configs", "tiny-llama", "config.json")
        args.backend, args.dtype, args.max_model_len = "reference", "float32", 2048
        args.quick = True
        args.bw = 10e9
        args.only = [x for x in args.only if x != "c"]
    else:
        args.bw = bandwidth_bytes_per_s(torch.device("cuda"))
    import gc

    import localserve

    results: dict = {"bandwidth_GBps": args.bw / 1e9, "runs": []}
    table: list[tuple[str, str, str, str]] = []
    for item in args.only:
        name, _, variant = item.partition(":")
        bench = {"a": bench_a, "a16": bench_a16, "b": bench_b, "c": bench_c,
                 "d": bench_d}[name]
        rows, run = len(table), {}
        with variant_setting(variant):
            bench(args, run, table)
        results["runs"].append({"workload": item, **run})
        if variant:
            table[rows:] = [(f"{r[0]} [{variant}]", *r[1:]) for r in table[rows:]]
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"\n{dev}, torch {torch.__version__}, localserve {localserve.__version__}, "
          f"copy bandwidth {args.bw / 1e9:.0f} GB/s")
    w = [max(len(r[i]) for r in [("workload", "localserve", "roofline", "vLLM 0.25.1"), *table])
         for i in range(4)]
    for row in [("workload", "localserve", "roofline", "vLLM 0.25.1"), *table]:
        print(" | ".join(c.ljust(w[i]) for i, c in enumerate(row)))


if __name__ == "__main__":
    main()
