"""The base of every data panel: a bordered widget that re-renders when the snapshot changes."""

from __future__ import annotations

from rich.console import RenderableType
from textual.reactive import reactive
from textual.widget import Widget

from localserve.tui.snapshot import DashboardSnapshot


class SnapshotPanel(Widget):
    """Bind `snapshot` to the app's (`data_bind`); subclasses implement `render_snapshot`.

    While the server is unreachable the last data stays on screen, dimmed (`-stale`).
    """

    DEFAULT_CSS = """
    SnapshotPanel {
        border: round $primary 60%;
        border-title-color: $text-accent;
        border-title-style: bold;
        border-subtitle-color: $text-muted;
        padding: 0 1;
        height: 100%;
    }
    SnapshotPanel.-stale {
        text-opacity: 55%;
    }
    """

    PANEL_TITLE = ""
    DIM_WHEN_STALE = True  # False for panels whose data does not come from the server
    snapshot: reactive[DashboardSnapshot | None] = reactive(None, always_update=True)

    def on_mount(self) -> None:
        self.border_title = self.PANEL_TITLE

    def watch_snapshot(self, snapshot: DashboardSnapshot | None) -> None:
        stale = snapshot is not None and snapshot.stats is not None and not snapshot.connected
        down = stale and snapshot.connection.status == "disconnected"
        self.set_class(down and self.DIM_WHEN_STALE, "-stale")
        self.border_subtitle = self.subtitle(snapshot)
        self.refresh()

    def subtitle(self, snapshot: DashboardSnapshot | None) -> str:
        return ""

    def render(self) -> RenderableType:
        return self.render_snapshot(self.snapshot, self.content_size.width)

    def render_snapshot(self, snapshot: DashboardSnapshot | None, width: int) -> RenderableType:
        raise NotImplementedError
