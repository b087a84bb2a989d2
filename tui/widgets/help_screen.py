"""The `?` help screen: keys and what each panel shows."""

from __future__ import annotations

from typing import ClassVar

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS = (
    ("q", "quit"),
    ("p", "pause / resume polling"),
    ("l", "show / hide the server log (localserve up --tui)"),
    ("?", "this help (escape closes)"),
)
PANELS = (
    ("Model", "model, quantization, backend, max context, device, engine uptime"),
    ("Requests", "running, waiting and preempted now; Σ = preemptions since start"),
    ("KV cache", "blocks used/total and free; prefix-cache hit rate (prompt tokens)"),
    ("This machine", "CPU, RAM, GPUs where the TUI runs, which may not be the server"),
    ("Throughput", "prompt and generated tok/s over the last 10 s; bars: 5 s bins, 5 min"),
    (
        "Latency",
        "p50/p95 of time to first token, inter-token and end-to-end latency over "
        "the last 60 s; dim rows: all time (nothing in the window). '>' = beyond "
        "the largest histogram bucket",
    ),
    ("Live requests", "tok/s since the previous poll (new requests: tokens / age)"),
)


def help_text() -> Group:
    keys = Table.grid(padding=(0, 2))
    keys.add_column(style="bold yellow", no_wrap=True)
    keys.add_column()
    for key, action in KEYS:
        keys.add_row(key, action)
    panels = Table.grid(padding=(0, 2))
    panels.add_column(style="bold", no_wrap=True)
    panels.add_column()
    for name, what in PANELS:
        panels.add_row(name, what)
    return Group(Text("localserve dashboard", style="bold"), Text(), keys, Text(), panels)


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 84; max-width: 100%; height: auto; max-height: 100%;
        border: round $accent; background: $surface; padding: 0 1;
    }
    HelpScreen Static { height: auto; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark", "dismiss", "Close"),
        Binding("q", "app.quit", "Quit"),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(help_text())
