"""Regenerate the TUI test recordings (`normal.jsonl`, `busy.jsonl`) from a small simulator.

    python tests/tui/data/make_recordings.py

The simulator is a toy continuous-batching server (Poisson arrivals, a running cap, KV
blocks, recompute preemption, a shared system prompt for prefix hits) that emits what
`GET /v1/localserve/stats` and `GET /metrics` would return, sampled every `poll_s`, in the
format `localserve tui --record` writes. Seeded, so the files are reproducible.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).parent
TTFT_BUCKETS = (0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0)
E2E_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)


@dataclass
class Hist:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float, n: int = 1) -> None:
        i = next((i for i, b in enumerate(self.bounds) if value <= b), len(self.bounds))
        self.counts[i] += n
        self.total += value * n

    def text(self, name: str, model: str) -> str:
        lines = [f"# HELP {name} localserve latency", f"# TYPE {name} histogram"]
        cumulative = 0
        for bound, c in zip((*self.bounds, math.inf), self.counts, strict=True):
            cumulative += c
            le = "+Inf" if math.isinf(bound) else repr(bound)
            lines.append(f'{name}_bucket{{le="{le}",model_name="{model}"}} {cumulative}.0')
        lines.append(f'{name}_count{{model_name="{model}"}} {cumulative}.0')
        lines.append(f'{name}_sum{{model_name="{model}"}} {self.total:.4f}')
        return "\n".join(lines)


@dataclass
class Req:
    id: str
    prompt: int
    max_gen: int
    arrival: float
    priority: int
    state: str = "waiting"
    gen: float = 0.0
    prefilled: float = 0.0
    first_token: float | None = None


@dataclass
class Profile:
    model: str
    backend: str
    device: str
    quantization: str | None
    max_model_len: int
    kv_blocks_total: int
    max_running: int
    prefill_tps: float  # prompt tokens per second for the whole batch
    decode_tps: float  # generated tokens per second at batch 1
    batch_gain: float  # decode throughput scales as batch ** batch_gain
    arrivals: list[tuple[float, float]]  # (from t, requests per second)
    prompt_range: tuple[int, int]
    gen_range: tuple[int, int]
    seed: int


def simulate(p: Profile, warmup_s: float, record_s: float, poll_s: float, dt: float = 0.25):
    rng = random.Random(p.seed)
    block = 16
    waiting: list[Req] = []
    running: list[Req] = []
    stats = dict(preempted=0, queries=0, hits=0, prompt=0, gen=0)
    hists = {
        n: Hist(b) for n, b in (("ttft", TTFT_BUCKETS), ("itl", ITL_BUCKETS), ("e2e", E2E_BUCKETS))
    }
    frames = []
    t, next_id, next_poll = 0.0, 0, warmup_s
    while t <= warmup_s + record_s + 1e-9:
        rate = next(r for start, r in reversed(p.arrivals) if t >= start)
        if rng.random() < rate * dt:
            next_id += 1
            waiting.append(
                Req(
                    f"cmpl-{rng.getrandbits(48):012x}",
                    rng.randint(*p.prompt_range),
                    rng.randint(*p.gen_range),
                    t,
                    rng.choice((0, 0, 0, 1)),
                )
            )

        def blocks(r: Req) -> int:
            return math.ceil((r.prompt + r.gen + 1) / block)

        while waiting and len(running) < p.max_running:
            r = waiting[0]
            if sum(map(blocks, running)) + blocks(r) > p.kv_blocks_total:
                break
            waiting.pop(0)
            if r.state == "waiting":
                stats["queries"] += r.prompt
                stats["hits"] += min(r.prompt, 256) if rng.random() < 0.7 else 0
            r.state = "running"
            running.append(r)
        while running and sum(map(blocks, running)) > p.kv_blocks_total:
            victim = running.pop()  # recompute preemption of the newest
            victim.state, victim.prefilled = "preempted", 0.0
            waiting.insert(0, victim)
            stats["preempted"] += 1
        budget = p.prefill_tps * dt
        decoders = [r for r in running if r.prefilled >= r.prompt]
        for r in running:
            if r.prefilled < r.prompt and budget > 0:
                step = min(budget, r.prompt - r.prefilled)
                r.prefilled += step
                budget -= step
                stats["prompt"] += step
        if decoders:
            per_req = p.decode_tps * len(decoders) ** p.batch_gain / len(decoders)
            for r in decoders:
                step = min(per_req * dt, r.max_gen - r.gen)
                if r.first_token is None and step > 0:
                    r.first_token = t + dt
                    hists["ttft"].observe(r.first_token - r.arrival)
                hists["itl"].observe(1 / per_req * rng.uniform(0.85, 1.2), max(0, round(step) - 1))
                r.gen += step
                stats["gen"] += step
                if r.gen >= r.max_gen:
                    running.remove(r)
                    hists["e2e"].observe(t + dt - r.arrival)
        t += dt
        if t >= next_poll - 1e-9:
            next_poll += poll_s
            frames.append(frame(p, t, running, waiting, stats, hists, block))
    return frames


def frame(p, t, running, waiting, stats, hists, block) -> dict:
    used = sum(math.ceil((r.prompt + r.gen + 1) / block) for r in running)
    requests = [
        {
            "id": r.id,
            "state": r.state,
            "prompt_tokens": r.prompt,
            "generated_tokens": int(r.gen),
            "priority": r.priority,
            "age_s": round(t - r.arrival, 3),
        }
        for r in running + waiting
    ]
    engine = {
        "model": p.model,
        "backend": p.backend,
        "device": p.device,
        "quantization": p.quantization,
        "max_model_len": p.max_model_len,
        "block_size": block,
        "num_running": len(running),
        "num_waiting": len(waiting),
        "num_preempted_total": stats["preempted"],
        "kv_blocks_total": p.kv_blocks_total,
        "kv_blocks_used": used,
        "prefix_cache_queries": stats["queries"],
        "prefix_cache_hits": stats["hits"],
        "prompt_tokens_total": int(stats["prompt"]),
        "generation_tokens_total": int(stats["gen"]),
        "uptime_s": round(t, 3),
        "requests": requests,
    }
    engine["kv_blocks_free"] = p.kv_blocks_total - used
    engine["kv_usage"] = used / p.kv_blocks_total
    engine["server_uptime_s"] = round(t + 4.2, 3)
    names = {
        "ttft": "localserve:time_to_first_token_seconds",
        "itl": "localserve:inter_token_latency_seconds",
        "e2e": "localserve:e2e_request_latency_seconds",
    }
    metrics = "\n".join(hists[k].text(n, p.model) for k, n in names.items()) + "\n"
    return {"ts": round(1_790_000_000 + t, 3), "stats": engine, "metrics": metrics}


NORMAL = Profile(
    model="gemma-3-270m-it-Q4_K_M",
    backend="cpu",
    device="cpu (x86_64 avx2, 8 threads)",
    quantization="Q4_K_M",
    max_model_len=32768,
    kv_blocks_total=2048,
    max_running=8,
    prefill_tps=900.0,
    decode_tps=38.0,
    batch_gain=0.6,
    arrivals=[(0, 0.3), (420, 0.6)],
    prompt_range=(40, 900),
    gen_range=(32, 256),
    seed=7,
)
BUSY = Profile(
    model="Qwen2.5-7B-Instruct-AWQ",
    backend="cuda",
    device="NVIDIA GeForce RTX 4090",
    quantization="awq",
    max_model_len=16384,
    kv_blocks_total=2400,
    max_running=48,
    prefill_tps=9000.0,
    decode_tps=75.0,
    batch_gain=0.8,
    arrivals=[(0, 1.0), (420, 3.0), (500, 2.0)],
    prompt_range=(200, 2400),
    gen_range=(64, 700),
    seed=11,
)


def main() -> None:
    # busy ends inside its load surge: a long queue, a full KV cache, preemptions.
    for name, profile, warmup_s in (("normal", NORMAL, 300), ("busy", BUSY, 230)):
        frames = simulate(profile, warmup_s=warmup_s, record_s=300, poll_s=5)
        path = HERE / f"{name}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for fr in frames:
                f.write(json.dumps(fr, separators=(",", ":")) + "\n")
        last = frames[-1]["stats"]
        print(
            f"{path.name}: {len(frames)} frames, {path.stat().st_size // 1024} KiB, "
            f"running {last['num_running']} waiting {last['num_waiting']} "
            f"kv {last['kv_usage']:.0%} preempted {last['num_preempted_total']}"
        )


if __name__ == "__main__":
    main()
