"""SVG snapshots of the dashboard from the recordings in data/ (pytest-textual-snapshot).

Deterministic by construction: the recordings carry the server clock, hardware is fixed,
and nothing reads the wall clock. Recordings are folded before the app starts (the same
`DashboardClient.poll` path, minus 60 renders), then the app polls once and hits the end.
Update after an intended change: `pytest tests/tui/test_snapshots.py --snapshot-update`.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from localserve.tui.app import DashboardApp
from localserve.tui.client import DashboardClient, HttpSource
from localserve.tui.hardware import FixedHardware
from localserve.tui.recording import ReplaySource
from localserve.tui.snapshot import GpuSample, HardwareSample

DATA = Path(__file__).parent / "data"
GIB = 2**30
LAPTOP = HardwareSample(37.0, int(9.1 * GIB), int(23.3 * GIB), (), "n/a (no pynvml)")
WORKSTATION = HardwareSample(
    61.0,
    int(41.7 * GIB),
    int(62.6 * GIB),
    (GpuSample(0, "NVIDIA GeForce RTX 4090", int(21.9 * GIB), int(24.0 * GIB), 97.0),),
)


def replayed(name: str, hardware: HardwareSample) -> DashboardClient:
    """A client that has already played the whole recording."""
    client = DashboardClient(ReplaySource(DATA / f"{name}.jsonl"), FixedHardware(hardware))

    async def fast_forward() -> None:
        while client.snapshot.connection.status != "replay_done":
            await client.poll()

    asyncio.run(fast_forward())
    return client


async def settle(pilot, client: DashboardClient, status: str) -> None:
    deadline = time.monotonic() + 20
    while client.snapshot.connection.status != status or pilot.app.snapshot is None:
        assert time.monotonic() < deadline
        await pilot.pause(0.02)
    await pilot.pause()


def app_after(name: str, hardware: HardwareSample) -> tuple[DashboardApp, DashboardClient]:
    client = replayed(name, hardware)
    return DashboardApp(client), client


def test_normal(snap_compare):
    app, client = app_after("normal", LAPTOP)
    assert snap_compare(
        app, terminal_size=(120, 36), run_before=lambda pilot: settle(pilot, client, "replay_done")
    )


def test_busy(snap_compare):
    app, client = app_after("busy", WORKSTATION)
    assert snap_compare(
        app, terminal_size=(120, 36), run_before=lambda pilot: settle(pilot, client, "replay_done")
    )


def test_busy_80x24(snap_compare):
    app, client = app_after("busy", WORKSTATION)
    assert snap_compare(
        app, terminal_size=(80, 24), run_before=lambda pilot: settle(pilot, client, "replay_done")
    )


def test_disconnected(snap_compare, normal_samples):
    """The server went away after a normal session: stale data dimmed, a retry pending."""
    calls = {"/v1/localserve/stats": 0, "/metrics": 0}

    def server(request: httpx.Request) -> httpx.Response:
        i = calls[request.url.path]  # the i-th poll gets the i-th sample, then nothing
        calls[request.url.path] += 1
        if i >= len(normal_samples):
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        if request.url.path == "/metrics":
            return httpx.Response(200, text=normal_samples[i].metrics)
        return httpx.Response(200, json=normal_samples[i].stats)

    source = HttpSource("http://127.0.0.1:8000", transport=httpx.MockTransport(server))
    # 30 s backoff: the pending retry must not fire during the screenshot
    client = DashboardClient(source, FixedHardware(LAPTOP), backoff_base_s=30, backoff_max_s=30)

    async def fast_forward() -> None:
        for _ in normal_samples:
            await client.poll()

    asyncio.run(fast_forward())
    assert client.snapshot.connected
    app = DashboardApp(client)
    assert snap_compare(
        app, terminal_size=(100, 30), run_before=lambda pilot: settle(pilot, client, "disconnected")
    )


def test_help_80x24(snap_compare):
    app, client = app_after("normal", LAPTOP)

    async def open_help(pilot):
        await settle(pilot, client, "replay_done")
        await pilot.press("question_mark")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(80, 24), run_before=open_help)


class ScriptedServer:
    """A ServerHandle that prints a fixed startup log (what `localserve up --tui` shows)."""

    LINES = (
        "loading model...",
        "INFO localserve.engine.factory: backend: cpu",
        "INFO localserve.loader.model_loader: loaded gemma3_text (gguf, 268M params) in 7.9s",
        "INFO localserve.engine.engine: KV pool: 2048 blocks x 16 tokens = 32768 tokens",
        "localserve ready: http://127.0.0.1:8000/v1 (model gemma-3-270m-it-Q4_K_M, backend cpu)",
    )

    async def start(self, on_line, on_exit) -> None:
        for line in self.LINES:
            on_line(line)

    async def stop(self) -> None:
        return None


def test_up_tui_with_server_log(snap_compare):
    client = replayed("normal", LAPTOP)
    app = DashboardApp(client, server=ScriptedServer())

    async def logged(pilot) -> None:
        await settle(pilot, client, "replay_done")
        while len(app.screen.query_one("ServerLog").lines) < len(ScriptedServer.LINES):
            await pilot.pause(0.02)
        await pilot.pause()

    assert snap_compare(app, terminal_size=(100, 34), run_before=logged)
