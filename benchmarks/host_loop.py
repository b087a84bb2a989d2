"""Host cost of the engine's step loop, with no model: what a fast GPU leaves to the CPU.

Usage: python benchmarks/host_loop.py [--seqs 256] [--rounds 5]

A stub runner packs every step exactly as the torch runners do (TorchModelRunner._prepare, on
the CPU) and "samples" token 5 for every draw, under async scheduling. Everything else is the
real engine: scheduler, block manager with prefix caching, detokenizer (an id tokenizer, as
the GPU benchmarks use), output deltas. Prints ms per step (the minimum over rounds: the
development VM is noisy) and the share of schedule / prepare / process.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import defaultdict

import torch
from gpu_profile import timed  # this folder's host-time wrapper

from localserve.config import engine_config
from localserve.engine.engine import EngineInfo, LLMEngine
from localserve.engine.id_tokenizer import IdTokenizer
from localserve.interfaces import ModelSpec, RunnerCapabilities, SchedulerOutput
from localserve.runner.torch_runner import TorchModelRunner, _Launched
from localserve.sampling_params import SamplingParams

VOCAB = 1000


class StubRunner(TorchModelRunner):
    capabilities = RunnerCapabilities(mixed_batches=True, overlap=True)

    def __init__(self, config) -> None:
        super().__init__(config, torch.device("cpu"), ops=None)
        self.spec = ModelSpec("stub", 1, 1, 1, VOCAB, 4096, "float32")

    def load_model(self) -> None:
        pass

    def profile_num_blocks(self) -> int:
        return 40_000

    def init_kv_cache(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks

    def launch(self, scheduled: SchedulerOutput) -> _Launched:
        step = self._prepare(scheduled)
        ids = torch.full((len(step.requests),), 5, dtype=torch.int64)
        self._last_sampled = (ids, step.first_draw)
        assert self.sampler is not None
        return _Launched(ids, None, step.requests, step.owners, self.sampler)


def run_once(num_seqs: int, seed: int) -> tuple[float, dict[str, float]]:
    config = engine_config(block_size=16, num_kv_blocks=40_000, max_num_seqs=1024,
                           max_num_batched_tokens=16384, async_scheduling=True)
    runner = StubRunner(config)
    engine = LLMEngine(config, runner, IdTokenizer(VOCAB, frozenset()),
                       EngineInfo("stub", "stub", "cpu"))
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
    args = ap.parse_args()
    best = min((run_once(args.seqs, seed=0) for _ in range(args.rounds)), key=lambda r: r[0])
    per_step, phases = best
    print(f"{args.seqs} sequences: {per_step * 1e3:.2f} ms/step (min of {args.rounds}); "
          + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in phases.items()))


if __name__ == "__main__":
    main()
