"""Pilot tests of the dashboard app: keys, disconnect/reconnect, resizes, the server log."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable

from localserve.tui.app import DashboardApp, build_client
from localserve.tui.client import HttpSource
from localserve.tui.hardware import FixedHardware
from localserve.tui.recording import RecordingSource, ReplaySource
from localserve.tui.server_runner import InProcessServer, SubprocessServer
from localserve.tui.snapshot import HardwareSample
from localserve.tui.widgets.hardware import HardwarePanel
from localserve.tui.widgets.help_screen import HelpScreen
from localserve.tui.widgets.model_panel import ModelPanel
from localserve.tui.widgets.requests_table import RequestsTable
from localserve.tui.widgets.server_log import ServerLog

HW = FixedHardware(HardwareSample(0.0, 0, 1))


async def wait_for(pilot, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the app"
        await pilot.pause(0.02)


def test_q_quits_and_closes_the_client(fake_server_factory, make_http_client, normal_samples):
    client = make_http_client(fake_server_factory(normal_samples), poll_interval_s=0.2)

    async def scenario():
        app = DashboardApp(client)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: client.snapshot.connected)
            await pilot.press("q")
            await wait_for(pilot, lambda: not app.is_running)
        return app

    app = asyncio.run(scenario())
    assert app.return_value == 0
    assert client.source._client.is_closed


def test_p_pauses_and_resumes(fake_server_factory, make_http_client, normal_samples, read_screen):
    client = make_http_client(fake_server_factory(normal_samples), poll_interval_s=0.2)

    async def scenario():
        app = DashboardApp(client)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: client.snapshot.num_polls >= 2)
            await pilot.press("p")
            await pilot.pause(0.1)  # let a poll that was already in flight land
            assert app.paused and "⏸ paused" in read_screen(app)
            frozen = client.snapshot.num_polls
            await pilot.pause(0.4)
            assert client.snapshot.num_polls == frozen
            await pilot.press("p")
            await wait_for(pilot, lambda: client.snapshot.num_polls > frozen + 1)
            assert "paused" not in read_screen(app)

    asyncio.run(scenario())


def test_question_mark_opens_and_closes_help(
    fake_server_factory, make_http_client, normal_samples, read_screen
):
    client = make_http_client(fake_server_factory(normal_samples), poll_interval_s=0.2)

    async def scenario():
        app = DashboardApp(client)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("question_mark")
            await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
            await pilot.pause()
            assert "pause / resume polling" in read_screen(app)
            polls = client.snapshot.num_polls
            await wait_for(pilot, lambda: client.snapshot.num_polls > polls)  # still polling
            await pilot.press("escape")
            await wait_for(pilot, lambda: not isinstance(app.screen, HelpScreen))
            await pilot.press("question_mark")
            await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
            await pilot.press("question_mark")
            await wait_for(pilot, lambda: not isinstance(app.screen, HelpScreen))

    asyncio.run(scenario())


def test_disconnected_then_reconnects_by_itself(
    fake_server_factory, make_http_client, normal_samples, read_screen
):
    server = fake_server_factory(normal_samples)
    server.down = True
    client = make_http_client(server, backoff_base_s=0.02, backoff_max_s=0.1)

    async def scenario():
        app = DashboardApp(client)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: client.snapshot.connection.attempt >= 3)
            await pilot.pause()
            text = read_screen(app)
            assert "disconnected, retrying in" in text and "connection refused" in text
            assert "Traceback" not in text
            server.down = False
            await wait_for(pilot, lambda: client.snapshot.connected)
            await pilot.pause(0.1)
            text = read_screen(app)
            assert "● connected" in text and "gemma-3-270m-it-Q4_K_M" in text
            # and down again mid-session: the last data stays, marked stale
            server.down = True
            await wait_for(pilot, lambda: client.snapshot.connection.status == "disconnected")
            await pilot.pause(0.1)
            assert "gemma-3-270m-it-Q4_K_M" in read_screen(app)
            assert app.screen.query_one(ModelPanel).has_class("-stale")
            assert not app.screen.query_one(HardwarePanel).has_class("-stale")  # local data

    asyncio.run(scenario())


def test_layout_collapses_and_survives_resizes(
    fake_server_factory, make_http_client, busy_samples, read_screen
):
    client = make_http_client(fake_server_factory(busy_samples), poll_interval_s=0.2)

    async def scenario():
        app = DashboardApp(client)
        async with app.run_test(size=(140, 44)) as pilot:
            await wait_for(pilot, lambda: client.snapshot.num_polls >= 2)
            for width, height in ((80, 24), (60, 18), (200, 60), (80, 24)):
                await pilot.resize_terminal(width, height)
                await pilot.pause(0.1)
                text = read_screen(app)
                lines = text.splitlines()
                assert len(lines) == height and max(map(len, lines)) <= width
                assert "Qwen2.5-7B" in text and "tok/s" in text and "Live requests" in text
                hardware_shown = app.screen.query_one(HardwarePanel).display
                assert hardware_shown == (width >= 72)
                assert ("Latency" in text) == (height >= 20)
            # at 80×24 the table still shows several requests
            table = app.screen.query_one(RequestsTable)
            assert table.size.height >= 8 and table.row_count == len(client.snapshot.requests)

    asyncio.run(scenario())


def test_table_keeps_the_highlighted_request(fake_server_factory, make_http_client, busy_samples):
    samples = busy_samples[50:54]  # 14 requests live through all four
    alive = set.intersection(*({r["id"] for r in s.stats["requests"]} for s in samples))
    server = fake_server_factory(samples[:1])  # repeats the first sample until we move on
    client = make_http_client(server, poll_interval_s=0.2)

    async def scenario():
        app = DashboardApp(client)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: client.snapshot.num_polls >= 1)
            await pilot.pause()
            first = [r.id for r in client.snapshot.requests]
            # a request that stays, below one that finishes: its row index will change
            gone = {rid for rid in first if rid not in alive}
            target = next(
                i for i, rid in enumerate(first) if rid in alive and gone & set(first[:i])
            )
            table = app.screen.query_one(RequestsTable)
            table.focus()
            await pilot.press("down")  # the keys move the cursor…
            assert table.cursor_coordinate.row == 1
            table.move_cursor(row=target)  # …and this goes straight to the row we want
            await pilot.pause()
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
            assert key == first[target]
            server.samples, server.position = samples, 1
            await wait_for(
                pilot, lambda: client.snapshot.stats.uptime_s == samples[-1].stats["uptime_s"]
            )
            await pilot.pause()
            rows = [r.id for r in client.snapshot.requests]
            assert table.row_count == len(rows) and rows.index(key) != target
            now = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
            assert now == key

    asyncio.run(scenario())


def test_server_subprocess_log_and_stop(fake_server_factory, make_http_client, normal_samples):
    script = "import time; print('server says hello', flush=True); time.sleep(60)"
    server = SubprocessServer([sys.executable, "-c", script], stop_timeout_s=5)
    client = make_http_client(fake_server_factory(normal_samples), poll_interval_s=0.1)

    async def scenario():
        app = DashboardApp(client, server=server)
        async with app.run_test(size=(100, 40)) as pilot:
            log = app.screen.query_one(ServerLog)
            await wait_for(pilot, lambda: any("server says hello" in ln for ln in log.lines))
            await pilot.press("l")
            assert not log.display
            await pilot.press("l")
            assert log.display
            await pilot.press("q")
            await wait_for(pilot, lambda: not app.is_running)

    asyncio.run(scenario())
    assert server.process is not None and server.process.returncode is not None


def test_server_in_process_log_and_stop(fake_server_factory, make_http_client, normal_samples):
    stop = threading.Event()

    def serve() -> None:
        logging.getLogger("localserve.server").warning("in-process server up")
        logging.getLogger("httpx").warning("poll noise that must not show")
        stop.wait(30)

    server = InProcessServer(serve, stop.set)
    client = make_http_client(fake_server_factory(normal_samples), poll_interval_s=0.1)

    async def scenario():
        app = DashboardApp(client, server=server)
        async with app.run_test(size=(100, 40)) as pilot:
            log = app.screen.query_one(ServerLog)
            await wait_for(pilot, lambda: any("in-process server up" in ln for ln in log.lines))
            await pilot.press("q")
            await wait_for(pilot, lambda: not app.is_running)
        return log

    log = asyncio.run(scenario())
    assert not any("poll noise" in ln for ln in log.lines)
    assert server.thread is not None and not server.thread.is_alive()


def test_build_client_sources(tmp_path, normal_samples):
    rec = tmp_path / "r.jsonl"
    rec.write_text("")
    live = build_client("http://x:1", "k", record=tmp_path / "out.jsonl", hardware=HW)
    assert isinstance(live.source, RecordingSource) and isinstance(live.source.inner, HttpSource)
    replay = build_client(replay=rec, hardware=HW)
    assert isinstance(replay.source, ReplaySource)
