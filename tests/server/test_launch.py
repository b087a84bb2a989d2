"""The server as a process (real launcher, fake engine): ready line, SIGTERM, engine death."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(r"^localserve ready: http://127\.0\.0\.1:(\d+)/v1 \(model fake-model, "
                   r"backend fake\)$")


class Proc:
    def __init__(self, settings: dict, **env: str) -> None:
        self.p = subprocess.Popen(
            [sys.executable, "-m", "tests.server.fake_server_main", json.dumps(settings)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env})
        self.lines: list[str] = []
        self.port = 0

    def wait_ready(self, timeout: float = 30) -> str:
        assert self.p.stdout is not None
        deadline = time.monotonic() + timeout
        result: dict[str, str] = {}

        def read() -> None:
            assert self.p.stdout is not None
            result["line"] = self.p.stdout.readline().rstrip("\n")

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(max(0.0, deadline - time.monotonic()))
        line = result.get("line", "")
        m = READY.match(line)
        assert m, f"no ready line, got {line!r}; stderr: {self.stderr_now()}"
        self.port = int(m.group(1))
        return line

    def stderr_now(self) -> str:
        if self.p.poll() is None:
            return "(running)"
        assert self.p.stderr is not None
        return self.p.stderr.read()

    def finish(self, timeout: float = 20) -> tuple[int, str, str]:
        out, err = self.p.communicate(timeout=timeout)
        return self.p.returncode, out, err

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        if p.p.poll() is None:
            p.p.kill()
            p.p.wait()


def test_ready_line_serves_and_sigterm_is_graceful(procs: list[Proc]) -> None:
    proc = Proc({"port": 0}, FAKE_TOKEN_DELAY="0.03")
    procs.append(proc)
    proc.wait_ready()
    with httpx.Client(base_url=proc.url, timeout=10) as http:
        assert http.get("/health").status_code == 200
        r = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
        assert r.status_code == 200
        # A stream in flight when SIGTERM arrives still completes.
        with http.stream("POST", "/v1/completions",
                         json={"prompt": "x", "max_tokens": 30, "stream": True}) as s:
            lines = s.iter_lines()
            assert next(lines).startswith("data: ")
            proc.p.send_signal(signal.SIGTERM)
            rest = list(lines)
        assert "data: [DONE]" in rest
    code, out, err = proc.finish()
    assert code == 0, err
    assert "fake engine shut down" in out
    assert "localserve: stopped" in err
    assert "loading fake weights" in err  # the progress reporting reached the terminal


def test_engine_death_exits_nonzero_without_hanging(procs: list[Proc]) -> None:
    proc = Proc({"port": 0}, FAKE_TOKEN_DELAY="0.05", FAKE_DIE_AFTER_S="1.0")
    procs.append(proc)
    proc.wait_ready()
    with httpx.Client(base_url=proc.url, timeout=10) as http:
        r = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 250, "stream": True})
        # The stream ends with an error event instead of hanging.
        assert '"engine_dead"' in r.text and r.text.endswith("data: [DONE]\n\n")
    start = time.monotonic()
    code, out, err = proc.finish()
    assert code == 3
    assert time.monotonic() - start < 10
    assert "engine died" in err and "fake engine shut down" in out


def test_busy_port_is_a_clear_error(procs: list[Proc]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = Proc({"port": port})
        procs.append(proc)
        code, out, err = proc.finish()
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err
    assert "Traceback" not in err
    assert "fake engine" not in out  # failed before loading anything
