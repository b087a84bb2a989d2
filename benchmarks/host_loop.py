"""Host cost of the engine's step loop, with no model: what a fast GPU leaves to the CPU.

Usage: python benchmarks/host_loop.py [--seqs 256] [--rounds 5] [--tokenizer id|default]
                                     [--gc-threshold 700]

A stub runner packs every step exactly as the torch runners do (TorchModelRunner._prepare, on
the CPU) and "samples" the same token for every draw, under async scheduling. Everything else
is the real engine: scheduler, block manager with prefix caching, detokenizer, output deltas.
The detokenizer runs over an id tokenizer (as the GPU benchmarks use; the default), or with
`--tokenizer default` over the default model's real one, drawing the tokens of an English
text in turn (what serving real text costs). Prints ms per step (the minimum over rounds: the
development VM is noisy) and the share of schedule / prepare / process.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import defaultdict
from typing import Any

import torch
from gpu_profile import timed  # this folder's host-time wrapper

from localserve.config import engine_config
from localserve.engine.engine import EngineInfo, LLMEngine
from localserve.engine.id_tokenizer import IdTokenizer
from localserve.interfaces import ModelSpec, RunnerCapabilities, SchedulerOutput
from localserve.runner.torch_runner import TorchModelRunner, _Launched
from localserve.sampling_params import SamplingParams

VOCAB = 1000
TEXT = ("The engine schedules every sequence, packs the step, runs the model and samples a "
        "token for each draw; then it detokenizes the new tokens and streams the text out.")


class StubRunner(TorchModelRunner):
    capabilities = RunnerCapabilities(mixed_batches=True, overlap=True)

    def __init__(self, config, vocab_size: int, tokens: list[int]) -> None:
        super().__init__(config, torch.device("cpu"), ops=None)
        self.spec = ModelSpec("stub", 1, 1, 1, vocab_size, 4096, "float32")
        self.tokens, self.steps = tokens, 0

    def load_model(self) -> None:
        pass

    def profile_num_blocks(self) -> int:
        return 40_000

    def init_kv_cache(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks

    def launch(self, scheduled: SchedulerOutput) -> _Launched:
        step = self._prepare(scheduled)
        self.steps += 1
        ids = torch.full((len(step.requests),), self.tokens[self.steps % len(self.tokens)],
                         dtype=torch.int64)
        self._last_sampled = (ids, step.first_draw)
        assert self.sampler is not None
        return _Launched(ids, None, step.requests, step.owners, self.sampler)


def tokenizer_and_tokens(name: str) -> tuple[Any, list[int]]:
    """(tokenizer, the tokens to draw in turn) for --tokenizer."""
    if name == "id":
        return IdTokenizer(VOCAB, frozenset()), [5]
    from localserve.config import default_model_path
    from localserve.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(default_model_path())
    return tokenizer, tokenizer.encode(TEXT, add_special_tokens=False)


def run_once(num_seqs: int, seed: int, tokenizer: str = "id") -> tuple[float, dict[str, float]]:
    config = engine_config(block_size=16, num_kv_blocks=40_000, max_num_seqs=1024,
                           max_num_batched_tokens=16384, async_scheduling=True)
    tok, tokens = tokenizer_and_tokens(tokenizer)
    runner = StubRunner(config, tok.vocab_size, tokens)
    engine = LLMEngine(config, runner, tok, EngineInfo("stub", "stub", "cpu"))
    rng = random.Random(seed)
    for i in range(num_seqs):
        prompt = [rng.randint(0, VOCAB - 1) for _ in range(rng.randint(100, 1024))]
        engine.add_request(str(i), prompt, SamplingParams(
            temperature=0.6, ignore_eos=True, max_tokens=rng.randint(100, 400)))
    phases: dict[str, list[float]] = defaultdict(list)
    for obj, name in [(engine.scheduler, "schedule"), (runner, "_prepare"),
                      (engine, "_process")]:
        setattr(obj, name, timed(getattr(obj, name), phases[name]))
    steps, start = 0, time.perf_counter()
    while engine.has_unfinished_requests():
        engine.step()
        steps += 1
    wall = time.perf_counter() - start
    return wall / steps, {k: sum(v) / steps for k, v in phases.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqs", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokenizer", choices=["id", "default"], default="id")
    ap.add_argument("--gc-threshold", type=int, default=None,
                    help="the engine's gen-0 GC threshold (default: its GC_GEN0_THRESHOLD)")
    args = ap.parse_args()
    if args.gc_threshold is not None:
        from localserve.engine import engine

        engine.GC_GEN0_THRESHOLD = args.gc_threshold
    best = min((run_once(args.seqs, 0, args.tokenizer) for _ in range(args.rounds)),
               key=lambda r: r[0])
    per_step, phases = best
    print(f"{args.seqs} sequences: {per_step * 1e3:.2f} ms/step (min of {args.rounds}); "
          + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in phases.items()))


if __name__ == "__main__":
    main()
