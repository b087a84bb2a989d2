"""The `?` help screen: keys and what each panel shows."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# localserve dashboard

| key | action |
|-----|--------|
| `q` | quit |
| `p` | pause / resume polling |
| `l` | show / hide the server log (with `localserve up --tui`) |
| `?` | this help (`escape` closes) |

- **Model**: model, quantization, backend, device, max context, uptime.
- **Requests**: running, waiting and preempted now; preemptions since start.
- **KV cache**: blocks used/total, free blocks, prefix-cache hit rate (prompt tokens).
- **This machine**: CPU, RAM, GPUs where the *TUI* runs (may not be the server).
- **Throughput**: prompt and generated tok/s (last 10 s average); bars over 5 minutes.
- **Latency**: p50/p95 of time to first token, inter-token and end-to-end latency,
  over the last 60 s, or all time when no request finished in that window.
- **Live requests**: tok/s is the rate since the previous poll.
"""


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 84; max-width: 100%; height: auto; max-height: 100%;
        border: round $accent; background: $surface; padding: 0 1;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark", "dismiss", "Close"),
        Binding("q", "app.quit", "Quit"),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Markdown(HELP)
