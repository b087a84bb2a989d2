"""Model & backend: what the server is running and where."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.text import Text

from localserve.tui import format as fmt
from localserve.tui.snapshot import DashboardSnapshot
from localserve.tui.widgets.base import SnapshotPanel


def _line(*parts: tuple[str, str]) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    for value, style in parts:
        text.append(value, style)
    return text


class ModelPanel(SnapshotPanel):
    """Name; quantization, backend, max context; device; KV block size and engine uptime.

    Ordered by importance: on a short terminal only the first three lines show.
    """

    PANEL_TITLE = "Model"

    def render_snapshot(self, snapshot: DashboardSnapshot | None, width: int) -> RenderableType:
        stats = snapshot.stats if snapshot else None
        if stats is None:
            return Text("waiting for the server…", style="dim")
        return Group(
            _line((stats.model, "bold")),
            _line(
                (stats.quantization or "unquantized", "magenta"),
                (" · ", "dim"),
                (stats.backend, "cyan"),
                (" · ctx ", "dim"),
                (fmt.count(stats.max_model_len), ""),
            ),
            _line((stats.device, "")),
            _line(
                ("block ", "dim"),
                (str(stats.block_size), ""),
                (" · engine up ", "dim"),
                (fmt.duration(stats.uptime_s), ""),
            ),
        )
