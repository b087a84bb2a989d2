"""Serving load: 1, 8 and 32 concurrent streaming clients on a fixed prompt set.

    python benchmarks/serve_load.py                       # starts `localserve up` itself
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --api-key KEY
    python benchmarks/serve_load.py --backend cpu --max-tokens 64 --requests 64

For each concurrency level, `--requests` streaming /v1/completions requests (greedy, fixed
max_tokens) run through that many concurrent clients. Reported: time to first token,
inter-token latency and end-to-end latency (p50/p99) and aggregate output tokens/s. When
`llama_cpp.server` is importable (and `--no-llamacpp` is not given) it is started on the same
GGUF file with the same clients in the same run, and the ratio of throughputs is printed.
Only loopback addresses are contacted; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from local_server import start_localserve, stop  # this folder's module

PROMPTS = [
    "The history of the printing press begins",
    "Write a short note to a neighbour about a lost cat:",
    "In mathematics, a prime number is",
    "The three most important things when learning to cook are",
    "Once upon a time in a small village by the sea,",
    "A good night's sleep matters because",
    "The recipe for a simple tomato soup:",
    "Explain to a child why the sky is blue.",
    "The main differences between trains and buses are",
    "Dear hiring manager, I am writing to apply for",
    "Photosynthesis is the process by which",
    "Five tips for keeping a small garden:",
    "The weather forecast for tomorrow says",
    "A haiku about autumn leaves:",
    "The rules of chess, in brief:",
    "My favourite book is",
]


@dataclass
class Sample:
    ttft: float
    itls: list[float]
    e2e: float
    tokens: int


@dataclass
class Level:
    concurrency: int
    wall_s: float
    samples: list[Sample] = field(default_factory=list)
    errors: int = 0

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.samples)

    @property
    def tok_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def one_request(http: httpx.AsyncClient, model: str, prompt: str,
                      max_tokens: int) -> Sample:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first = last = None
    itls: list[float] = []
    chunks = 0
    usage_tokens = None
    async with http.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(str(event["error"]))
            if event.get("usage"):
                usage_tokens = event["usage"].get("completion_tokens")
            if not event.get("choices") or not event["choices"][0].get("text"):
                continue
            now = time.perf_counter()
            if first is None:
                first = now
            else:
                itls.append(now - last)  # type: ignore[operator]
            last = now
            chunks += 1
    end = time.perf_counter()
    if first is None:
        raise RuntimeError("no tokens streamed")
    return Sample(first - start, itls, end - start, usage_tokens or chunks)


async def run_level(url: str, api_key: str | None, model: str, concurrency: int,
                    requests: int, max_tokens: int, timeout_s: float) -> Level:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout_s,
                                 limits=limits) as http:
        queue: asyncio.Queue[str] = asyncio.Queue()
        for i in range(requests):
            queue.put_nowait(PROMPTS[i % len(PROMPTS)])
        level = Level(concurrency, 0.0)

        async def worker() -> None:
            while not queue.empty():
                prompt = queue.get_nowait()
                try:
                    level.samples.append(await one_request(http, model, prompt, max_tokens))
                except Exception as e:
                    level.errors += 1
                    print(f"  request failed: {e}", file=sys.stderr)

        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))),
                               timeout=timeout_s * max(1, requests // concurrency + 1))
        level.wall_s = time.perf_counter() - start
        return level


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, path: str, timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready after {timeout_s}s")


def start_llamacpp(gguf: str, n_ctx: int, threads: int, timeout_s: float
                   ) -> tuple[subprocess.Popen, str]:
    port = free_port()
    # interrupt_requests False: a new request waits for the one in flight (by default it
    # cancels it, and the cancelled stream would count as an error, not as slowness).
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", gguf,
                             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx),
                             "--n_threads", str(threads), "--n_threads_batch", str(threads),
                             "--interrupt_requests", "False", "--model_alias", "llamacpp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_http(url, "/v1/models", timeout_s, proc)
    return proc, url


def bench(name: str, url: str, api_key: str | None, args: argparse.Namespace
          ) -> list[Level]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    model = httpx.get(url + "/v1/models", headers=headers, timeout=30).json()["data"][0]["id"]
    levels = []
    # Warm-up: first requests pay for lazy initialisation.
    asyncio.run(run_level(url, api_key, model, 1, 2, 4, args.timeout))
    for c in args.concurrency:
        n = args.requests or max(2 * c, 8)
        print(f"{name}: {n} requests at concurrency {c}...", file=sys.stderr)
        levels.append(asyncio.run(run_level(url, api_key, model, c, n, args.max_tokens,
                                            args.timeout)))
    return levels


def table(results: dict[str, list[Level]]) -> str:
    head = (f"{'server':<11} {'conc':>4} {'reqs':>4} {'err':>3} {'TTFT p50':>9} {'TTFT p99':>9} "
            f"{'ITL p50':>8} {'ITL p99':>8} {'E2E p50':>8} {'E2E p99':>8} {'out tok/s':>10}")
    rows = [head, "-" * len(head)]
    for name, levels in results.items():
        for lv in levels:
            ttft = [s.ttft * 1000 for s in lv.samples]
            itl = [x * 1000 for s in lv.samples for x in s.itls]
            e2e = [s.e2e for s in lv.samples]
            rows.append(f"{name:<11} {lv.concurrency:>4} {len(lv.samples):>4} {lv.errors:>3} "
                        f"{pct(ttft, 50):>7.0f}ms {pct(ttft, 99):>7.0f}ms "
                        f"{pct(itl, 50):>6.1f}ms {pct(itl, 99):>6.1f}ms "
                        f"{pct(e2e, 50):>7.2f}s {pct(e2e, 99):>7.2f}s {lv.tok_s:>10.1f}")
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="an already running server (default: start localserve)")
    p.add_argument("--api-key", default=os.environ.get("LOCALSERVE_API_KEY"))
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")],
                   default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=0, help="per level (default 2x, >= 8)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--timeout", type=float, default=600, help="per request, seconds")
    p.add_argument("--backend", default=None, help="passed to `localserve up`")
    p.add_argument("--gguf", default=None, help="model for both servers (default: built-in)")
    p.add_argument("--no-llamacpp", action="store_true")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="CPU threads for both servers")
    p.add_argument("--json", default=None, metavar="FILE", help="also write raw results")
    args = p.parse_args()
    if args.url and not re.match(r"^http://(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?/?$",
                                 args.url):
        p.error("--url must be a loopback address (127.0.0.0/8, localhost or [::1])")

    from localserve.config import default_model_path

    gguf = args.gguf or default_model_path()
    results: dict[str, list[Level]] = {}
    procs = []
    try:
        if args.url:
            url = args.url.rstrip("/")
        else:
            extra = ["--num-threads", str(args.threads)]
            extra += ["--backend", args.backend] if args.backend else []
            if args.gguf:
                extra = ["--model", args.gguf, *extra]
            server = start_localserve(extra, args.timeout)
            procs.append(server.proc)
            url = server.url
        results["localserve"] = bench("localserve", url, args.api_key, args)
        if not args.no_llamacpp and importlib.util.find_spec("llama_cpp") is not None:
            proc, lurl = start_llamacpp(gguf, 4096, args.threads, args.timeout)
            procs.append(proc)
            results["llama.cpp"] = bench("llama.cpp", lurl, None, args)
        elif not args.no_llamacpp:
            print("(llama_cpp.server is not installed: no side-by-side run; "
                  "pip install 'llama-cpp-python[server]')", file=sys.stderr)
    finally:
        for proc in procs:
            stop(proc)
    if "llama.cpp" in results:
        print("\nthroughput ratio localserve / llama.cpp:")
        for ours, theirs in zip(results["localserve"], results["llama.cpp"], strict=True):
            ratio = ours.tok_s / theirs.tok_s if theirs.tok_s else float("nan")
            print(f"  concurrency {ours.concurrency:>2}: {ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({name: [{
            "concurrency": lv.concurrency, "wall_s": lv.wall_s, "errors": lv.errors,
            "samples": [s.__dict__ for s in lv.samples]} for lv in levels]
            for name, levels in results.items()}, indent=1))
    print()
    print(table(results))
    return 1 if any(lv.errors for levels in results.values() for lv in levels) else 0


if __name__ == "__main__":
    raise SystemExit(main())
