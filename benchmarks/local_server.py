"""`python -m localserve up` from the checkout as a child process, for the benchmark scripts
(serve_load.py, gpu_server_check.py). Standard library only: the GPU machine has no HTTP
client packages."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
READY = re.compile(r"^localserve ready: (http://\S+)/v1 \(model (\S+), backend (\S+)\)$")


@dataclass
class LocalServer:
    proc: subprocess.Popen
    url: str        # without /v1
    model: str
    backend: str


def start_localserve(extra: list[str], timeout_s: float, echo: bool = False) -> LocalServer:
    """Starts `localserve up --port 0 *extra` and waits for its ready line. A thread keeps
    reading the server's stdout (printing it with `echo`), so the pipe never fills."""
    proc = subprocess.Popen([sys.executable, "-m", "localserve", "up", "--port", "0", *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    found: list[re.Match] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if echo:
                print(f"  [up] {line.rstrip()}", flush=True)
            if not found and (m := READY.match(line.rstrip())):
                found.append(m)
                ready.set()
        ready.set()  # the process ended

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(timeout_s) or not found:
        proc.kill()
        raise RuntimeError(f"localserve did not print its ready line (exit code {proc.poll()})")
    m = found[0]
    return LocalServer(proc, m.group(1), m.group(2), m.group(3))


def stop(proc: subprocess.Popen, timeout_s: float = 30) -> int | None:
    """SIGTERM (a graceful drain), then a kill after `timeout_s`; the exit code, None if
    killed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None
    return proc.returncode
