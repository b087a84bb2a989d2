"""The top line: which server, connection state (with retry countdown) and paused/replay."""

from __future__ import annotations

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from localserve.tui import format as fmt
from localserve.tui.snapshot import DashboardSnapshot


def connection_text(snapshot: DashboardSnapshot | None) -> Text:
    if snapshot is None or snapshot.connection.status == "connecting":
        return Text("● connecting…", "bold yellow")
    c = snapshot.connection
    if c.status == "connected":
        return Text("● connected", "bold green")
    if c.status == "replay_done":
        return Text(f"■ {c.message}", "bold blue")
    retry = f" in {c.retry_in_s:.1f}s" if c.retry_in_s is not None else ""
    text = Text(f"● disconnected, retrying{retry}…", "bold red")
    text.append(f" ({c.message}; attempt {c.attempt})", "red")
    return text


class StatusBar(Widget):
    DEFAULT_CSS = """
    StatusBar { height: 1; background: $panel; padding: 0 1; }
    """

    snapshot: reactive[DashboardSnapshot | None] = reactive(None, always_update=True)
    paused: reactive[bool] = reactive(False)

    def render(self) -> RenderableType:
        snap = self.snapshot
        left = Text.assemble(("localserve ", "bold"))
        left.append_text(connection_text(snap))
        if snap is not None:
            left.append(f"  {snap.source}", "dim")  # last: the first thing cut when narrow
        right = Text(no_wrap=True)
        if self.paused:
            right.append(" ⏸ paused ", "bold reverse yellow")
        elif snap is not None and snap.connected and snap.stats and snap.stats.server_uptime_s:
            right.append(f" server up {fmt.duration(snap.stats.server_uptime_s)}", "dim")
        grid = Table.grid(expand=True)
        grid.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
        grid.add_column(justify="right", no_wrap=True)
        grid.add_row(left, right)
        return grid
