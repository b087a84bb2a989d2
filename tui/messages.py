"""Messages between the poller, the server runner and the app (the composition root)."""

from __future__ import annotations

from textual.message import Message

from localserve.tui.snapshot import DashboardSnapshot


class SnapshotReady(Message):
    """The poller produced a new snapshot."""

    def __init__(self, snapshot: DashboardSnapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class ServerLogLine(Message):
    """One line of output from a server started by `localserve up --tui`."""

    def __init__(self, line: str) -> None:
        super().__init__()
        self.line = line


class ServerExited(Message):
    """The server started by the TUI ended (return code, None if unknown)."""

    def __init__(self, returncode: int | None) -> None:
        super().__init__()
        self.returncode = returncode
