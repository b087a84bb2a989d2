"""The CLI's model-running commands on the real default model: run (one-shot), bench, probe."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def localserve(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "localserve", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_run_one_shot_streams_an_answer() -> None:
    r = localserve("run", "default", "Say hello.", "--max-tokens", "8", "--temperature", "0")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip(), "no answer printed"
    assert "Traceback" not in r.stderr


def test_bench_reports_throughput() -> None:
    r = localserve("bench", "--num-prompts", "4", "--input-len", "16", "--output-len", "4")
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"^4 requests, 64 prompt \+ 16 output tokens in [\d.]+s$", r.stdout, re.M)
    assert re.search(r"throughput: [\d.]+ req/s, [\d.]+ output tok/s", r.stdout)


def test_probe_picks_a_backend_for_the_default_model() -> None:
    r = localserve("probe", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert re.search(r"^backend: \w+$", r.stdout, re.M)
    assert "model: gemma-3-270m" in r.stdout
    assert re.search(r"KV cache \((16|32)-bit\): [\d.,]+ KiB per token", r.stdout)
