"""KV cache: block usage with a bar, free blocks and the prefix-cache hit rate."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.text import Text

from localserve.tui import format as fmt
from localserve.tui.snapshot import DashboardSnapshot
from localserve.tui.widgets.base import SnapshotPanel


def usage_style(usage: float) -> str:
    return "red" if usage >= 0.9 else "yellow" if usage >= 0.7 else "green"


def _fit(width: int, *variants: tuple[tuple[str, str], ...]) -> Text:
    """The first variant that fits in `width` (the last one, cut, when none does)."""
    for parts in variants:
        if sum(len(value) for value, _ in parts) <= width:
            break
    return Text.assemble(*parts, no_wrap=True, overflow="ellipsis")


class KvCachePanel(SnapshotPanel):
    PANEL_TITLE = "KV cache"

    def render_snapshot(self, snapshot: DashboardSnapshot | None, width: int) -> RenderableType:
        stats = snapshot.stats if snapshot else None
        if snapshot is None or stats is None:
            return Text("—", style="dim")
        pct = f" {stats.kv_usage * 100:.0f}%"
        usage = Text(no_wrap=True)
        usage.append(fmt.bar(stats.kv_usage, max(1, width - len(pct))), usage_style(stats.kv_usage))
        usage.append(pct, "bold")
        blocks = f"{fmt.count(stats.kv_blocks_used)}/{fmt.count(stats.kv_blocks_total)}"
        hit = fmt.percent(snapshot.prefix_hit_rate)
        free = fmt.count(stats.kv_blocks_free)
        return Group(
            usage,
            _fit(width, ((blocks, ""), (" blocks", "dim")), ((blocks, ""),)),
            _fit(
                width,
                (("prefix hit ", "dim"), (hit, "bold cyan")),
                (("prefix ", "dim"), (hit, "bold cyan")),
            ),
            _fit(
                width,
                (("free ", "dim"), (free, ""), (f" · {stats.block_size} tok/blk", "dim")),
                (("free ", "dim"), (free, "")),
            ),
        )
