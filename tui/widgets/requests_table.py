"""The live requests table: one row per running, preempted or waiting request."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import DataTable

from localserve.tui import format as fmt
from localserve.tui.snapshot import DashboardSnapshot, RequestRow

COLUMNS = ("id", "state", "prompt", "gen", "tok/s", "age", "prio")
STATE_STYLES = {"running": "green", "waiting": "yellow", "preempted": "red"}
ID_WIDTH = 18


def short_id(request_id: str, width: int = ID_WIDTH) -> str:
    return request_id if len(request_id) <= width else request_id[: width - 1] + "…"


def row_cells(row: RequestRow) -> tuple[Text, ...]:
    return (
        Text(short_id(row.id)),
        Text(row.state, STATE_STYLES.get(row.state, "")),
        Text(fmt.count(row.prompt_tokens), justify="right"),
        Text(fmt.count(row.generated_tokens), justify="right"),
        Text(fmt.rate(row.tokens_per_s), justify="right"),
        Text(fmt.duration(row.age_s), justify="right"),
        Text(str(row.priority), justify="right"),
    )


class RequestsTable(DataTable):
    """Rebuilt on every snapshot; the highlighted request keeps its highlight."""

    DEFAULT_CSS = """
    RequestsTable {
        border: round $primary 60%;
        border-title-color: $text-accent;
        border-title-style: bold;
        border-subtitle-color: $text-muted;
        height: 1fr;
        min-height: 4;
    }
    RequestsTable:focus > .datatable--cursor {
        background: $primary 40%; color: $foreground; text-style: bold;
    }
    RequestsTable > .datatable--cursor { background: $primary 15%; }
    RequestsTable.-stale { text-opacity: 55%; }
    """

    snapshot: reactive[DashboardSnapshot | None] = reactive(None, always_update=True)

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        self.border_title = "Live requests"
        self.add_columns(*COLUMNS)

    def watch_snapshot(self, snapshot: DashboardSnapshot | None) -> None:
        if not self.is_mounted or snapshot is None:
            return
        self.set_class(snapshot.connection.status == "disconnected", "-stale")
        rows = snapshot.requests
        keep: str | None = None
        if self.row_count:
            keep = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        self.clear()
        for row in rows:
            self.add_row(*row_cells(row), key=row.id)
        ids = [row.id for row in rows]
        if keep in ids:
            self.move_cursor(row=ids.index(keep), animate=False)
        self.border_title = f"Live requests ({len(rows)})"
        self.border_subtitle = "idle" if not rows else ""
