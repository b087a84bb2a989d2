"""`localserve tui`: the dashboard app (the composition root) and its entry points.

The app owns one `DashboardClient`; a timer starts a worker that polls once and posts the
new immutable snapshot; the app stores it in one reactive that every panel is bound to.
The CLI calls `run(url, api_key, ...)` or, for `localserve up --tui`, `run_with_server(...)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.reactive import reactive
from textual.timer import Timer
from textual.widgets import Footer

from localserve.tui.client import DashboardClient, HardwareReader, HttpSource, StatsSource
from localserve.tui.messages import ServerExited, ServerLogLine, SnapshotReady
from localserve.tui.recording import RecordingSource, ReplaySource
from localserve.tui.server_runner import ServerHandle, server_handle
from localserve.tui.snapshot import DashboardSnapshot
from localserve.tui.widgets.hardware import HardwarePanel
from localserve.tui.widgets.help_screen import HelpScreen
from localserve.tui.widgets.kv_cache import KvCachePanel
from localserve.tui.widgets.latency import LatencyPanel
from localserve.tui.widgets.model_panel import ModelPanel
from localserve.tui.widgets.requests_panel import RequestsPanel
from localserve.tui.widgets.requests_table import RequestsTable
from localserve.tui.widgets.server_log import ServerLog
from localserve.tui.widgets.status_bar import StatusBar
from localserve.tui.widgets.throughput import ThroughputPanel

DEFAULT_URL = "http://127.0.0.1:8000"
Breakpoints = list[tuple[int, str]]


class DashboardApp(App[int]):
    """A live view of one localserve. Panels render `snapshot`; nothing else holds state."""

    TITLE = "localserve"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    #top { height: 6; }
    #top > * { width: 1fr; min-width: 18; }
    #top > ModelPanel { width: 1.3fr; }
    #middle { height: 5; }
    #middle > ThroughputPanel { width: 1fr; }
    #middle > LatencyPanel { width: 30; }
    Screen.-short #top { height: 5; }
    Screen.-tiny #top { height: 5; }
    Screen.-tiny #middle { display: none; }
    Screen.-narrow HardwarePanel { display: none; }
    """
    # Screen classes for the layout to collapse on small terminals (80×24 over SSH).
    HORIZONTAL_BREAKPOINTS: ClassVar[Breakpoints] = [(0, "-narrow"), (72, "-wide")]
    VERTICAL_BREAKPOINTS: ClassVar[Breakpoints] = [(0, "-tiny"), (20, "-short"), (32, "-tall")]
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("p", "toggle_pause", "Pause/resume"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("l", "toggle_log", "Server log"),
    ]

    snapshot: reactive[DashboardSnapshot | None] = reactive(None, always_update=True)
    paused: reactive[bool] = reactive(False)

    def __init__(self, client: DashboardClient, *, server: ServerHandle | None = None) -> None:
        super().__init__()
        self.client = client
        self.server = server
        self._timer: Timer | None = None
        self._stopping = False

    def compose(self) -> ComposeResult:
        yield StatusBar().data_bind(DashboardApp.snapshot, DashboardApp.paused)
        with Horizontal(id="top"):
            yield ModelPanel().data_bind(DashboardApp.snapshot)
            yield RequestsPanel().data_bind(DashboardApp.snapshot)
            yield KvCachePanel().data_bind(DashboardApp.snapshot)
            yield HardwarePanel().data_bind(DashboardApp.snapshot)
        with Horizontal(id="middle"):
            yield ThroughputPanel().data_bind(DashboardApp.snapshot)
            yield LatencyPanel().data_bind(DashboardApp.snapshot)
        yield RequestsTable().data_bind(DashboardApp.snapshot)
        if self.server is not None:
            yield ServerLog(id="server-log")
        yield Footer()

    async def on_mount(self) -> None:
        self.snapshot = self.client.snapshot
        if self.server is not None:
            await self.server.start(self._server_line, self._server_exit)
        self._schedule(0)

    # Polling: timer → worker → SnapshotReady → reactive → panels.

    def _schedule(self, delay_s: float) -> None:
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(max(delay_s, 0.001), self._start_poll, name="poll")

    def _start_poll(self) -> None:
        self.run_worker(self._poll(), group="poll", exclusive=True, exit_on_error=False)

    async def _poll(self) -> None:
        try:
            snapshot = await self.client.poll()
        except Exception as e:  # a bug in one poll must not stop the dashboard
            self.log.error(f"poll failed: {e!r}")
            snapshot = self.client.snapshot
        self.post_message(SnapshotReady(snapshot))

    def on_snapshot_ready(self, message: SnapshotReady) -> None:
        self.snapshot = message.snapshot
        if not self.paused and not self.client.finished and not self._stopping:
            self._schedule(self.client.next_delay_s)

    # Server started by `localserve up --tui` (lines may arrive from another thread).

    def _server_line(self, line: str) -> None:
        self.post_message(ServerLogLine(line))

    def _server_exit(self, returncode: int | None) -> None:
        self.post_message(ServerExited(returncode))

    def on_server_log_line(self, message: ServerLogLine) -> None:
        self.screen_stack[0].query_one(ServerLog).write_line(message.line)

    def on_server_exited(self, message: ServerExited) -> None:
        self.screen_stack[0].query_one(ServerLog).server_exited(message.returncode)
        if not self._stopping:
            self.notify(f"the server exited ({message.returncode})", severity="error")

    # Keys.

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        if self.paused:
            if self._timer is not None:
                self._timer.stop()
        elif not self.client.finished:
            self._schedule(0)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_toggle_log(self) -> None:
        log = self.screen_stack[0].query_one(ServerLog)
        log.display = not log.display

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "toggle_log":
            return self.server is not None
        return True

    async def action_quit(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._timer is not None:
            self._timer.stop()
        if self.server is not None:
            self.notify("stopping the server…")
            await self.server.stop()
        await self.client.aclose()
        self.exit(0)


def build_client(
    url: str = DEFAULT_URL,
    api_key: str | None = None,
    *,
    record: str | Path | None = None,
    replay: str | Path | None = None,
    poll_interval_s: float = 1.0,
    hardware: HardwareReader | None = None,
) -> DashboardClient:
    """A client for a live server (optionally recording) or for a recording's replay."""
    source: StatsSource = ReplaySource(replay) if replay else HttpSource(url, api_key)
    if record:
        source = RecordingSource(source, record)
    if hardware is None:
        from localserve.tui.hardware import LocalHardware

        hardware = LocalHardware()
    return DashboardClient(source, hardware, poll_interval_s=poll_interval_s)


def run(
    url: str = DEFAULT_URL,
    api_key: str | None = None,
    *,
    record: str | Path | None = None,
    replay: str | Path | None = None,
    poll_interval_s: float = 1.0,
) -> int:
    """`localserve tui [--url URL] [--api-key KEY] [--record FILE] [--replay FILE]`.

    Returns the process exit code.
    """
    client = build_client(
        url, api_key, record=record, replay=replay, poll_interval_s=poll_interval_s
    )
    return DashboardApp(client).run() or 0


def run_with_server(
    server: Sequence[str] | Callable[[], object] | ServerHandle,
    url: str = DEFAULT_URL,
    api_key: str | None = None,
    *,
    stop: Callable[[], None] | None = None,
    record: str | Path | None = None,
    poll_interval_s: float = 1.0,
) -> int:
    """`localserve up --tui`: start the server, show its log in a panel, stop it on quit.

    Args:
        server: an argv (started as a subprocess; recommended), or a blocking callable run
            in a thread (e.g. `uvicorn.Server(config).run`, with `log_config=None`), or a
            `ServerHandle`.
        url: where that server will listen; the dashboard retries until it answers.
        stop: for a callable, how to ask it to stop (e.g. set `server.should_exit`).
    """
    handle = server_handle(server, stop)
    client = build_client(url, api_key, record=record, poll_interval_s=poll_interval_s)
    app = DashboardApp(client, server=handle)
    try:
        return app.run() or 0
    finally:
        kill = getattr(handle, "kill_if_running", None)
        if kill is not None:
            kill()  # the app died without `quit`: never leave an orphan server behind
