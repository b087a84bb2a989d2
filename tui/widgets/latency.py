"""Latency: TTFT, inter-token and end-to-end p50/p95 from the server's histograms."""

from __future__ import annotations

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from localserve.tui import format as fmt
from localserve.tui.snapshot import DashboardSnapshot, LatencyView
from localserve.tui.widgets.base import SnapshotPanel

LABELS = ("TTFT", "ITL", "E2E")


def scope_note(view: LatencyView) -> str:
    """Which window the numbers cover; rows that fell back to all-time are dimmed."""
    if not view.available:
        return "no /metrics"
    scopes = {s.scope for s in view.summaries if s.count > 0}
    window = f"last {view.window_s:.0f}s"
    if scopes == {"window"}:
        return f"{window} · {fmt.count(view.e2e.count)} req"
    if scopes == {"all"}:
        return f"all time · {fmt.count(view.e2e.count)} req"
    if scopes:
        return f"{window} · dim: all time"
    return "no requests yet"


class LatencyPanel(SnapshotPanel):
    PANEL_TITLE = "Latency p50 / p95"

    def subtitle(self, snapshot: DashboardSnapshot | None) -> str:
        if snapshot is None or snapshot.stats is None:
            return ""
        return scope_note(snapshot.latency)

    def render_snapshot(self, snapshot: DashboardSnapshot | None, width: int) -> RenderableType:
        if snapshot is None or snapshot.stats is None:
            return Text("—", style="dim")
        view = snapshot.latency
        mixed = len({s.scope for s in view.summaries if s.count > 0}) > 1
        grid = Table.grid(expand=True, padding=(0, 1))
        grid.add_column(no_wrap=True, style="bold")
        grid.add_column(justify="right", no_wrap=True)
        grid.add_column(justify="right", no_wrap=True)
        for label, s in zip(LABELS, view.summaries, strict=True):
            style = "dim" if mixed and s.scope == "all" else ""
            grid.add_row(
                Text(label, style),
                Text(fmt.latency(s.p50, s.p50_beyond), style),
                Text(fmt.latency(s.p95, s.p95_beyond), style or "dim"),
            )
        return grid
