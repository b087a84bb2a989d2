"""Latency: TTFT, inter-token and end-to-end p50/p95 from the server's histograms."""

from __future__ import annotations

from localserve.tui import format as fmt
from localserve.tui.snapshot import DashboardSnapshot, LatencySummary
from localserve.tui.widgets.base import SnapshotPanel
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text


class LatencyPanel(SnapshotPanel):
    PANEL_TITLE = "Latency p50 / p95"

    def subtitle(self, snapshot: DashboardSnapshot | None) -> str:
        if snapshot is None or snapshot.stats is None:
            return ""
        view = snapshot.latency
        n = fmt.count(view.e2e.count)
        if view.scope == "window":
            return f"last {view.window_s:.0f}s · {n} req"
        if view.scope == "all":
            return f"all time · {n} req"
        return "no /metrics"

    def render_snapshot(self, snapshot: DashboardSnapshot | None, width: int) -> RenderableType:
        if snapshot is None or snapshot.stats is None:
            return Text("—", style="dim")
        view = snapshot.latency
        grid = Table.grid(expand=True, padding=(0, 1))
        grid.add_column(no_wrap=True, style="bold")
        grid.add_column(justify="right", no_wrap=True)
        grid.add_column(justify="right", no_wrap=True, style="dim")
        rows: list[tuple[str, LatencySummary]] = [
            ("TTFT", view.ttft),
            ("ITL", view.itl),
            ("E2E", view.e2e),
        ]
        for label, summary in rows:
            grid.add_row(
                label,
                fmt.latency(summary.p50, summary.p50_beyond),
                fmt.latency(summary.p95, summary.p95_beyond),
            )
        return grid
