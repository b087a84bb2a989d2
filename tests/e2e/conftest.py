"""One real server for the e2e tests: `python -m localserve up --port 0` from the checkout.

It serves the built-in default model on the backend `up` picks (LOCALSERVE_BACKEND=reference
forces the torch reference backend). Started once per session — loading takes a while on two
cores — and stopped with SIGTERM at the end, which must be a clean exit 0.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(r"^localserve ready: (http://127\.0\.0\.1:(\d+)/v1) \(model (\S+), "
                   r"backend (\S+)\)$")
LOAD_TIMEOUT_S = 600


@dataclass
class RealServer:
    proc: subprocess.Popen
    stderr_file: tempfile._TemporaryFileWrapper
    ready_line: str
    base_url: str  # ends with /v1
    url: str  # without /v1
    model: str
    backend: str
    stdout: list[str] = field(default_factory=list)


def start_up(*extra: str, env: dict[str, str] | None = None) -> RealServer:
    # stderr goes to a file: a pipe nobody drains would block the server once it fills.
    err_file = tempfile.NamedTemporaryFile("w+", suffix=".log")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "localserve", "up", "--port", "0", *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=err_file, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if READY.match(lines[-1]):
                found.set()
        found.set()  # EOF: the process ended

    threading.Thread(target=read, daemon=True).start()
    if not found.wait(LOAD_TIMEOUT_S) or not any(READY.match(x) for x in lines):
        proc.kill()
        proc.wait(timeout=30)
        err_file.seek(0)
        pytest.fail(f"`localserve up` printed no ready line; stdout={lines!r}\n"
                    f"stderr tail:\n{err_file.read()[-4000:]}")
    line = next(x for x in lines if READY.match(x))
    m = READY.match(line)
    assert m is not None
    return RealServer(proc, err_file, line, m.group(1), m.group(1)[: -len("/v1")], m.group(3),
                      m.group(4), lines)


def stop(server: RealServer, timeout: float = 60) -> tuple[int, str]:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
        pytest.fail("the server did not stop within a minute of SIGTERM")
    server.stderr_file.seek(0)
    err = server.stderr_file.read()
    server.stderr_file.close()
    return server.proc.returncode, err


@pytest.fixture(scope="session")
def real_server() -> Iterator[RealServer]:
    start = time.monotonic()
    server = start_up()
    server.stdout.append(f"(ready after {time.monotonic() - start:.1f}s)")
    yield server
    code, err = stop(server)
    assert code == 0, f"SIGTERM should exit 0, got {code}; stderr tail:\n{err[-3000:]}"
