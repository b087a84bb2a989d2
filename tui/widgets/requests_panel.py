"""Request counts: running, waiting, preempted now and preemptions since start."""

from __future__ import annotations

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from localserve.tui.snapshot import DashboardSnapshot
from localserve.tui.widgets.base import SnapshotPanel


class RequestsPanel(SnapshotPanel):
    PANEL_TITLE = "Requests"

    def render_snapshot(self, snapshot: DashboardSnapshot | None, width: int) -> RenderableType:
        stats = snapshot.stats if snapshot else None
        if stats is None:
            return Text("—", style="dim")
        grid = Table.grid(expand=True)
        grid.add_column(no_wrap=True)
        grid.add_column(justify="right", no_wrap=True)
        grid.add_row(Text("running", "green"), Text(str(stats.num_running), "bold green"))
        grid.add_row(Text("waiting", "yellow"), Text(str(stats.num_waiting), "bold yellow"))
        preempted = Text(str(stats.num_preempted_now), "bold red")
        total = str(stats.num_preempted_total)
        if self.content_size.height >= 4:
            grid.add_row(Text("preempted", "red"), preempted)
            grid.add_row(Text("Σ preempted", "dim"), Text(total, "dim"))
        else:  # short terminal: the total since start goes on the same line, if it fits
            if width >= len("preempted") + 1 + len(preempted) + 2 + len(total):
                preempted.append(f" Σ{total}", "dim")
            grid.add_row(Text("preempted", "red"), preempted)
        return grid
