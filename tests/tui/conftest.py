"""Fixtures for the TUI tests: recordings, a fake server over httpx.MockTransport, screen text."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from rich.console import Console
from textual.app import App

from localserve.tui.client import DashboardClient, HttpSource
from localserve.tui.hardware import FixedHardware
from localserve.tui.recording import RawSample, load_recording
from localserve.tui.snapshot import HardwareSample

DATA = Path(__file__).parent / "data"
GIB = 2**30

LAPTOP = HardwareSample(37.0, int(9.1 * GIB), int(23.3 * GIB), (), "n/a (no pynvml)")


class FakeServer:
    """Serves recorded samples in order over a MockTransport; `down` makes it unreachable."""

    def __init__(self, samples: list[RawSample], api_key: str | None = None) -> None:
        self.samples = samples
        self.api_key = api_key
        self.position = 0
        self.down = False
        self.requests: list[httpx.Request] = []
        self.transport = httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.down:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return httpx.Response(401, json={"error": "unauthorized"})
        sample = self.samples[min(self.position, len(self.samples) - 1)]
        if request.url.path == "/v1/localserve/stats":
            self.position += 1
            return httpx.Response(200, json=sample.stats)
        if request.url.path == "/metrics" and sample.metrics is not None:
            return httpx.Response(200, text=sample.metrics)
        if request.url.path == "/health":
            return httpx.Response(200)
        return httpx.Response(404)


@pytest.fixture(scope="session")
def normal_samples() -> list[RawSample]:
    return load_recording(DATA / "normal.jsonl")


@pytest.fixture(scope="session")
def busy_samples() -> list[RawSample]:
    return load_recording(DATA / "busy.jsonl")


@pytest.fixture
def fake_server_factory() -> Callable[..., FakeServer]:
    return FakeServer


def http_client(server: FakeServer, **kwargs) -> DashboardClient:
    """A dashboard client on the fake server, with fast polling and fixed hardware."""
    source = HttpSource(
        "http://fake:8000",
        server.api_key,
        transport=server.transport,
        clock=lambda: 1_790_000_000.0,
    )
    kwargs.setdefault("poll_interval_s", 0.01)
    kwargs.setdefault("backoff_base_s", 0.01)
    kwargs.setdefault("backoff_max_s", 0.05)
    return DashboardClient(source, FixedHardware(LAPTOP), **kwargs)


@pytest.fixture
def make_http_client() -> Callable[..., DashboardClient]:
    return http_client


def screen_text(app: App) -> str:
    """What the terminal shows right now, as plain text."""
    width, height = app.size
    console = Console(
        width=width,
        height=height,
        file=io.StringIO(),
        record=True,
        force_terminal=True,
        color_system=None,
        legacy_windows=False,
        safe_box=False,
    )
    console.print(
        app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    )
    return console.export_text()


@pytest.fixture
def read_screen() -> Callable[[App], str]:
    return screen_text
