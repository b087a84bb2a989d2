"""Where a batch-1 decode token's time goes on the CPU backend (host wall time per phase).

Usage: python benchmarks/cpu_profile.py [--threads 2] [--tokens 64]
Wraps the C kernels, the layer ops and the engine phases with timers, generates `--tokens`
greedy tokens after a 16-token prompt on the default model, and prints ms per token. Phases
nest: `forward` contains the decoder layers (one C call each by default; with
LOCALSERVE_CPU_LAYER_CALLS=0 their matmuls, norms, rotary and attention one by one);
`compute_logits` contains the LM head matmul (counted in `gguf_matmul` too).
"""

from __future__ import annotations

import argparse
import collections
import time
from collections.abc import Callable


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()

    import localserve.kernels.cpu as kernels
    from localserve import LLM, SamplingParams
    from localserve.backends.cpu.methods import c_layer_ops
    from localserve.kernels.cpu.layer import DecoderLayerKernel
    from localserve.layers.ops import LayerOps, install_layer_ops

    totals: dict[str, float] = collections.defaultdict(float)

    def timed(fn: Callable, key: str) -> Callable:
        def wrapper(*a, **kw):
            t = time.perf_counter()
            out = fn(*a, **kw)
            totals[key] += time.perf_counter() - t
            return out

        return wrapper

    # Before loading: the linear layers bind the matmul functions when they are built.
    for name in ("gguf_matmul", "gguf_matmul_multi"):
        setattr(kernels, name, timed(getattr(kernels, name), name))
    # Whole layers in one C call (the default; LOCALSERVE_CPU_LAYER_CALLS=0 for the module
    # path, whose norms, rotary, attention and matmuls are then timed one by one).
    DecoderLayerKernel.run = timed(DecoderLayerKernel.run, "decoder_layer (C)")
    llm = LLM(backend="cpu", num_threads=args.threads, enable_prefix_caching=False)
    engine, runner = llm.engine, llm.engine.runner

    ops = c_layer_ops()
    install_layer_ops(runner.model, LayerOps(
        rms_norm=timed(ops.rms_norm, "rms_norm"),
        rotary_embedding=timed(ops.rotary_embedding, "rotary"),
        act_and_mul=timed(ops.act_and_mul, "act_and_mul")))
    targets = [(runner.ops, "attend"), (runner.ops, "write_kv"), (runner, "_prepare"),
               (runner, "_forward"), (runner.model, "compute_logits"),
               (engine.scheduler, "schedule"), (engine, "_process")]
    for obj, name in targets:
        setattr(obj, name, timed(getattr(obj, name), name.lstrip("_")))
    prompt = [2] + [(7919 * i) % 259000 + 1000 for i in range(1, 16)]
    llm.generate([prompt], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    runner.sampler.sample = timed(runner.sampler.sample, "sample")
    totals.clear()
    t = time.perf_counter()
    llm.generate([prompt], SamplingParams(max_tokens=args.tokens, temperature=0,
                                          ignore_eos=True))
    wall = time.perf_counter() - t
    n = args.tokens
    print(f"{wall * 1e3 / n:.2f} ms per token ({n / wall:.1f} tok/s), {args.threads} threads")
    for key, value in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {key:18s} {value * 1e3 / n:7.2f} ms/token")


if __name__ == "__main__":
    main()
