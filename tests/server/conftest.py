"""Fixtures for the server tests: a fake engine, an in-process client, a live uvicorn server."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

from localserve.server.app import create_app
from localserve.settings import Settings
from tests.server.fake_engine import FakeEngine


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def make_client() -> Callable[..., TestClient]:
    def make(engine: Any, **settings: Any) -> TestClient:
        app = create_app(engine, Settings(**settings))
        return TestClient(app, raise_server_exceptions=False)

    return make


@pytest.fixture
def client(engine: FakeEngine, make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(engine)


def parse_sse(text: str) -> list[Any]:
    """The `data:` payloads of an event stream, JSON-decoded ([DONE] kept as the string)."""
    events = []
    assert text.endswith("\n\n"), "an SSE stream must end with a blank line"
    for block in text.split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: "), block
        payload = block[len("data: "):]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


class LiveServer:
    """uvicorn on 127.0.0.1 (a free port) in a thread, serving the app around `engine`."""

    def __init__(self, engine: Any, **settings: Any) -> None:
        self.engine = engine
        self.app = create_app(engine, Settings(**settings))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off",
                                timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.sock]))

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture
def live_server(engine: FakeEngine) -> Iterator[LiveServer]:
    with LiveServer(engine) as server:
        yield server


@pytest.fixture
def sse() -> Callable[[str], list[Any]]:
    return parse_sse
