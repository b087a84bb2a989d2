"""Log lines of the server that `localserve up --tui` started (hidden when there is none)."""

from __future__ import annotations

from textual.widgets import Log


class ServerLog(Log):
    DEFAULT_CSS = """
    ServerLog {
        border: round $primary 60%;
        border-title-color: $text-accent;
        border-title-style: bold;
        height: 8;
    }
    Screen.-short ServerLog { height: 5; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(max_lines=2000, auto_scroll=True, id=id)

    def on_mount(self) -> None:
        self.border_title = "Server log"

    def server_exited(self, returncode: int | None) -> None:
        self.write_line(f"[localserve tui] server exited with code {returncode}")
        self.border_subtitle = f"exited ({returncode})"
