"""Throughput: prompt and generation tok/s now, with sparklines over the last minutes."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.text import Text

from localserve.tui import format as fmt
from localserve.tui.snapshot import DashboardSnapshot
from localserve.tui.widgets.base import SnapshotPanel

LABEL_WIDTH = 7
VALUE_WIDTH = 8


def _row(
    label: str, series: tuple[float, ...], value: float | None, style: str, width: int
) -> Text:
    room = max(0, width - LABEL_WIDTH - VALUE_WIDTH)
    text = Text(no_wrap=True, overflow="crop")
    text.append(label.ljust(LABEL_WIDTH), "bold")
    text.append(fmt.sparkline(series, room), style)
    text.append(fmt.rate(value).rjust(VALUE_WIDTH), "bold")
    return text


class ThroughputPanel(SnapshotPanel):
    """Headline rates average the last few seconds; the bars are tok/s per 5 s bin."""

    PANEL_TITLE = "Throughput tok/s"

    def subtitle(self, snapshot: DashboardSnapshot | None) -> str:
        if snapshot is None or snapshot.stats is None:
            return ""
        return f"bars: last {snapshot.series_span_s / 60:g} min"

    def render_snapshot(self, snapshot: DashboardSnapshot | None, width: int) -> RenderableType:
        if snapshot is None or snapshot.stats is None:
            return Text("—", style="dim")
        stats = snapshot.stats
        totals = Text.assemble(
            ("Σ prompt ", "dim"),
            fmt.count(stats.prompt_tokens_total),
            ("  Σ gen ", "dim"),
            fmt.count(stats.generation_tokens_total),
            no_wrap=True,
            overflow="ellipsis",
        )
        return Group(
            _row("prompt", snapshot.prompt_series, snapshot.prompt_tps, "cyan", width),
            _row("gen", snapshot.generation_series, snapshot.generation_tps, "green", width),
            totals,
        )
