"""Where a decode step's time goes on the GPU: kernel table plus host-side phases.

Usage (GPU machine): python benchmarks/gpu_profile.py [--config llama|qwen] [--batch 1]
Runs a short greedy generation on dummy weights, then (1) the torch profiler's kernel table for
a few decode steps and (2) wall time per engine phase (schedule, prepare, forward, sample,
process, and the wait for the device) averaged over the decode steps, host time only.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = {"llama": "llama-3.1-8b", "qwen": "qwen3-0.6b"}


def timed(fn, bucket: list[float]):
    """fn wrapped to append its host wall time to `bucket` (no device syncs: with async
    scheduling the host runs ahead, and `wait` shows how long it waits for the device)."""

    def wrapper(*a, **kw):
        t = time.perf_counter()
        out = fn(*a, **kw)
        bucket.append(time.perf_counter() - t)
        return out

    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", choices=list(CONFIGS), default="llama")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--cprofile", action="store_true", help="host-side profile instead")
    ap.add_argument("--no-async", action="store_true", help="step synchronously (A/B)")
    ap.add_argument("--profile-steps", type=int, default=8, help="decode steps profiled")
    args = ap.parse_args()
    from torch.profiler import ProfilerActivity, profile

    from localserve import LLM, SamplingParams

    cfg = os.path.join(HERE, "configs", CONFIGS[args.config], "config.json")
    llm = LLM(cfg, load_format="dummy", dtype="bfloat16", max_model_len=4096, backend="cuda",
              max_num_seqs=max(args.batch, 8), max_num_batched_tokens=16384,
              async_scheduling=not args.no_async)
    rng = random.Random(0)
    prompts = [[rng.randint(0, 10000) for _ in range(args.prompt_len)]
               for _ in range(args.batch)]
    params = SamplingParams(max_tokens=args.tokens, temperature=0, ignore_eos=True)
    llm.generate(prompts, params)  # warm-up + graph capture

    engine, runner = llm.engine, llm.engine.runner
    if args.cprofile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        t = time.perf_counter()
        llm.generate(prompts, params)
        prof.disable()
        print(f"wall {time.perf_counter() - t:.2f}s")
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
        pstats.Stats(prof).sort_stats("cumtime").print_stats(20)
        return
    totals: dict[str, list[float]] = defaultdict(list)
    for obj, name in [(engine.scheduler, "schedule"), (runner, "_prepare"),
                      (runner, "_forward"), (engine, "_process"),
                      (runner.model, "compute_logits"), (engine, "step"), (runner, "launch"),
                      (engine.scheduler, "update")]:
        setattr(obj, name, timed(getattr(obj, name), totals[name]))
    runner.sampler.sample = timed(runner.sampler.sample, totals["sample"])
    from localserve.runner import torch_runner

    wait = torch_runner._Launched.result
    torch_runner._Launched.result = lambda self: timed(wait, totals["wait+pack"])(self)
    t = time.perf_counter()
    llm.generate(prompts, params)
    wall = time.perf_counter() - t
    steps = len(totals["schedule"])
    print(f"\n{args.config} batch {args.batch}: {steps} steps, {wall / steps * 1e3:.2f} ms/step "
          f"(wall), {args.batch * args.tokens / wall:.0f} tok/s")
    for name, vals in totals.items():
        worst = ", ".join(f"#{i}: {v * 1e3:.1f}" for v, i in
                          sorted(((v, i) for i, v in enumerate(vals)), reverse=True)[:3])
        vals = vals[1:] if len(vals) > 2 else vals  # drop the prefill step
        print(f"  {name:15s} {sum(vals) / max(len(vals), 1) * 1e3:8.3f} ms/step   "
              f"slowest calls (ms) {worst}")

    prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
    decode_launches = profile_decode_steps(runner, prof, args.profile_steps)
    llm.generate(prompts, SamplingParams(max_tokens=args.profile_steps + 4, temperature=0,
                                         ignore_eos=True))
    print(f"\nkernel table of {decode_launches()} decode steps ({args.batch} rows each; the "
          f"prefill steps before them are not profiled)")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=22,
                                    max_name_column_width=60))


def profile_decode_steps(runner, prof, steps: int):
    """Runs `prof` over `steps` decode launches (every sequence at one token) that follow the
    prefill, so the table is of decode alone; returns a counter of the profiled steps."""
    inner = runner.launch
    seen = {"decode": 0, "profiled": 0}

    def launch(scheduled):
        decode = all(s.num_tokens == 1 for s in scheduled.seqs)
        seen["decode"] += decode
        if decode and seen["decode"] == 2:  # one decode step in: the prefill has drained
            prof.start()
        out = inner(scheduled)
        if decode and seen["decode"] >= 2 and seen["profiled"] < steps:
            seen["profiled"] += 1
            if seen["profiled"] == steps:
                import torch

                torch.cuda.synchronize()
                prof.stop()
        return out

    runner.launch = launch
    return lambda: seen["profiled"]


if __name__ == "__main__":
    main()
