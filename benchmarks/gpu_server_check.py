"""The OpenAI server on the cuda backend, end to end (issue 6: "the OpenAI server runs on this
backend unchanged").

Usage (GPU machine, the server's wheels carried in .whl: `bash benchmarks/gpu_session.sh server`):
    python benchmarks/gpu_server_check.py [--backend cuda] [--model tiny|default]
On any machine, against another backend: python benchmarks/gpu_server_check.py --backend cpu

Writes a tiny random Llama checkpoint with a tokenizer and chat template (tests/helpers), or
takes the built-in default model (`--model default`), starts `python -m localserve up` on it,
and drives the endpoints with the standard library only (the GPU machine has no HTTP client
packages):
- /health and /v1/models;
- completions, plain and streamed, greedy (the stream must spell the same text), and a
  token-id prompt;
- chat completions;
- 16 concurrent completions (batched decode, CUDA graphs of several rows);
- a bad request (400 with an OpenAI-style error body);
- /metrics;
- with `--model default`, the golden prompt's ids through /tokenize and its first 8 greedy
  tokens against the HF transformers goldens.

It then sends SIGTERM, which must end the server with exit code 0. Prints one line per check
and exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from local_server import ROOT, start_localserve, stop  # this folder's module

START_TIMEOUT_S = 600


def request(base: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
    """(status, body) of a GET, or of a POST of `body` as JSON."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def stream_text(base: str, body: dict) -> tuple[str, bool]:
    """The text of a streamed completion, and whether it ended with `data: [DONE]`."""
    req = urllib.request.Request(base + "/v1/completions",
                                 data=json.dumps({**body, "stream": True}).encode(),
                                 headers={"Content-Type": "application/json"})
    text, done = [], False
    with urllib.request.urlopen(req, timeout=120) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            text.append(json.loads(line[6:])["choices"][0]["text"])
    return "".join(text), done


Checks = list[tuple[str, bool, str]]


def checker(checks: Checks) -> Callable[..., None]:
    """check(name, ok, detail=""): records one check in `checks` and prints its line."""

    def check(name: str, ok: bool, detail: str = "") -> None:
        checks.append((name, ok, detail))
        print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)

    return check


def run_checks(base: str, model_id: str) -> Checks:
    checks: Checks = []
    check = checker(checks)

    status, _ = request(base, "/health")
    check("GET /health", status == 200, str(status))
    status, body = request(base, "/v1/models")
    ids = [m["id"] for m in json.loads(body)["data"]] if status == 200 else []
    check("GET /v1/models", ids == [model_id], str(ids))

    greedy = {"model": model_id, "prompt": "hello world, this is", "max_tokens": 8,
              "temperature": 0}
    status, body = request(base, "/v1/completions", greedy)
    first = json.loads(body) if status == 200 else {}
    text = first.get("choices", [{}])[0].get("text", "")
    tokens = first.get("usage", {}).get("completion_tokens", 0)
    check("completion", status == 200 and 1 <= tokens <= 8, f"{tokens} tokens {text!r}")
    status, body = request(base, "/v1/completions", greedy)
    again = json.loads(body)["choices"][0]["text"] if status == 200 else None
    check("greedy completion repeats", again == text, repr(again))
    streamed, done = stream_text(base, greedy)
    check("streamed completion = plain", streamed == text and done, repr(streamed))
    status, body = request(base, "/v1/completions",
                           {"model": model_id, "prompt": [5, 6, 7, 8], "max_tokens": 4})
    check("token-id prompt", status == 200, str(status))

    status, body = request(base, "/v1/chat/completions", {
        "model": model_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})
    reply = json.loads(body)["choices"][0]["message"] if status == 200 else {}
    check("chat completion", status == 200 and reply.get("role") == "assistant"
          and isinstance(reply.get("content"), str), f"{status} {reply}")

    def one(i: int) -> int:
        return request(base, "/v1/completions", {"model": model_id, "prompt": f"request {i}",
                                                  "max_tokens": 16, "temperature": 0.8,
                                                  "seed": i})[0]

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(one, range(16)))
    check("16 concurrent completions", statuses == [200] * 16, str(sorted(set(statuses))))

    status, body = request(base, "/v1/completions",
                           {"model": model_id, "prompt": "x", "max_tokens": -1})
    error = json.loads(body).get("error", {}) if body.startswith(b"{") else {}
    check("bad request: 400, OpenAI error body", status == 400 and "message" in error,
          f"{status} {error.get('message', body[:80])!r}")

    status, body = request(base, "/metrics")
    check("GET /metrics", status == 200 and b"localserve:generation_tokens" in body, str(status))
    return checks


def golden_checks(base: str, model_id: str) -> Checks:
    """The default model through the server against the HF transformers goldens
    (tests/e2e/golden): the tokenizer's ids for a golden prompt, and its first 8 greedy tokens
    (the "code" prompt: no near-tie there in fp32 or bf16), compared as text via /detokenize."""
    golden = json.loads((ROOT / "tests" / "e2e" / "golden" / "gemma3_270m_greedy.json")
                        .read_text())["prompts"]["code"]
    checks: Checks = []
    check = checker(checks)
    status, body = request(base, "/tokenize", {"model": model_id, "prompt": golden["text"]})
    ids = json.loads(body)["tokens"] if status == 200 else None
    check("golden prompt tokenized as HF does", ids == golden["prompt_ids"], str(ids))
    status, body = request(base, "/v1/completions", {
        "model": model_id, "prompt": golden["prompt_ids"], "max_tokens": 8, "temperature": 0,
        "ignore_eos": True})
    text = json.loads(body)["choices"][0]["text"] if status == 200 else None
    status, body = request(base, "/detokenize",
                           {"model": model_id, "tokens": golden["greedy_ids"][:8]})
    expected = json.loads(body)["prompt"] if status == 200 else None
    check("greedy = HF golden, 8 tokens", text == expected and text is not None,
          f"{text!r} vs {expected!r}")
    return checks


def tiny_models():
    """tests/helpers/tiny_models.py, loaded by path: with the checkout on sys.path its top-level
    `kernels/` folder would shadow the `kernels` package transformers looks for."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "tiny_models", ROOT / "tests" / "helpers" / "tiny_models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["tiny_models"] = module  # (its dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="cuda")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--model", choices=("tiny", "default"), default="tiny",
                    help="tiny: a random Llama written now; default: no --model, so the "
                         "built-in default model, as a bare `localserve up` serves")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = [] if args.model == "default" else ["--model", str(
            tiny_models().make_tiny_checkpoint(Path(tmp), "llama", "safetensors",
                                               with_tokenizer=True).path)]
        start = time.perf_counter()
        server = start_localserve([*model, "--backend", args.backend, "--dtype", args.dtype,
                                   "--log-level", "info"], START_TIMEOUT_S, echo=True)
        print(f"server up in {time.perf_counter() - start:.1f} s on backend {server.backend}",
              flush=True)
        try:
            checks = [("backend", server.backend == args.backend, server.backend),
                      *run_checks(server.url, server.model)]
            if args.model == "default":
                checks += golden_checks(server.url, server.model)
        finally:
            code = stop(server.proc, timeout_s=60)
        checks.append(("SIGTERM: exit code 0", code == 0, str(code)))
    failed = [name for name, ok, _ in checks if not ok]
    print(f"\nserver on backend {args.backend}: {len(checks) - len(failed)} of {len(checks)} "
          f"checks passed" + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
