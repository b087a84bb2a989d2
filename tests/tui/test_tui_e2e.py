"""End to end: the dashboard starts the real server (default model) as `localserve up --tui`
does, waits through model loading, and shows concurrent completions live.

Checks through the TUI's own client and app: the server's log reaches the log panel,
generation throughput goes above zero, every request appears in the live table, the
latency panel counts them, and quitting stops the server.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import Callable

import httpx
import pytest

from localserve.tui.app import DashboardApp
from localserve.tui.client import DashboardClient, HttpSource
from localserve.tui.hardware import FixedHardware
from localserve.tui.server_runner import SubprocessServer
from localserve.tui.snapshot import HardwareSample
from localserve.tui.widgets.requests_table import RequestsTable
from localserve.tui.widgets.server_log import ServerLog

pytest.importorskip("localserve.server.app")
pytest.importorskip("localserve.engine.async_engine")

API_KEY = "sk-tui-e2e"
NUM_REQUESTS = 4
MAX_TOKENS = 32
LOAD_TIMEOUT_S = 300
# The server picks its backend itself (as `localserve up` does); set e.g.
# LOCALSERVE_TUI_E2E_BACKEND=reference to pin one.
BACKEND_ARGS = (
    ["--backend", os.environ["LOCALSERVE_TUI_E2E_BACKEND"]]
    if os.environ.get("LOCALSERVE_TUI_E2E_BACKEND")
    else []
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_for(pilot, predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.1)


async def complete(url: str, i: int) -> dict:
    async with httpx.AsyncClient(timeout=120) as http:
        r = await http.post(
            f"{url}/v1/completions",
            headers={"Authorization": f"Bearer {API_KEY}"},
            json={
                "prompt": f"Request {i}: a short story about a lighthouse keeper.",
                "max_tokens": MAX_TOKENS,
                "temperature": 0,
                "ignore_eos": True,
            },
        )
        r.raise_for_status()
        return r.json()


def test_dashboard_of_the_real_server():
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        sys.executable,
        "-m",
        "localserve",
        "serve",
        "--port",
        str(port),
        "--api-key",
        API_KEY,
        "--log-level",
        "info",
        *BACKEND_ARGS,
    ]
    server = SubprocessServer(argv, stop_timeout_s=20)
    source = HttpSource(url, API_KEY)
    client = DashboardClient(
        source,
        FixedHardware(HardwareSample(0.0, 0, 1)),
        poll_interval_s=0.25,
        backoff_base_s=0.25,
        backoff_max_s=1.0,
    )
    seen: set[str] = set()
    result: dict = {}

    async def scenario() -> None:
        app = DashboardApp(client, server=server)
        async with app.run_test(size=(120, 40)) as pilot:
            log = app.screen.query_one(ServerLog)
            table = app.screen.query_one(RequestsTable)
            exited = lambda: server.process is not None and server.process.returncode is not None
            await wait_for(
                pilot,
                lambda: client.snapshot.connected or exited(),
                LOAD_TIMEOUT_S,
                "the server to load its model",
            )
            assert client.snapshot.connected, "server exited:\n" + "\n".join(log.lines)
            # the dashboard retried while the model loaded, then attached by itself
            assert any("localserve ready" in line for line in log.lines)

            started = time.monotonic()
            jobs = asyncio.gather(*(complete(url, i) for i in range(NUM_REQUESTS)))
            while not jobs.done():
                seen.update(table.get_row_at(r)[0].plain for r in range(table.row_count))
                await pilot.pause(0.05)
            responses = await jobs
            result["seconds"] = time.monotonic() - started
            result["ids"] = [r["id"] for r in responses]
            result["tokens"] = sum(r["usage"]["completion_tokens"] for r in responses)

            done = lambda: (
                client.snapshot.latency.e2e.count >= NUM_REQUESTS
                and (client.snapshot.generation_tps or 0) > 0
            )
            await wait_for(pilot, done, 30, "throughput and latency to show the requests")
            result["snapshot"] = client.snapshot
            await pilot.press("q")
            await wait_for(pilot, lambda: not app.is_running, 30, "the app to quit")

    asyncio.run(scenario())

    snap = result["snapshot"]
    assert result["tokens"] == NUM_REQUESTS * MAX_TOKENS
    assert snap.generation_tps > 0 and snap.stats.generation_tokens_total >= result["tokens"]
    assert snap.latency.ttft.p50 is not None and snap.latency.e2e.p95 is not None
    # the table shows ids cut to 18 characters: every request was on screen while it ran
    shown = {rid.rstrip("…") for rid in seen}
    missing = [i for i in result["ids"] if not any(i.startswith(s) for s in shown)]
    assert not missing, f"not in the live table: {missing}; seen {sorted(seen)}"
    assert server.process is not None and server.process.returncode is not None
