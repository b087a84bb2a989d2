"""This machine's CPU, RAM and GPUs (the TUI's host, which may not be the server's)."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.text import Text

from localserve.tui import format as fmt
from localserve.tui.snapshot import DashboardSnapshot, HardwareSample
from localserve.tui.widgets.base import SnapshotPanel


def _meter(label: str, fraction: float, value: str, width: int) -> Text:
    """`CPU ███░░ 37%`: the bar takes what the label and value leave over."""
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(label, "bold")
    room = width - len(label) - len(value) - 2
    if room >= 3:
        style = "red" if fraction >= 0.9 else "yellow" if fraction >= 0.7 else "green"
        text.append(" " + fmt.bar(fraction, room), style)
    text.append(" " + value)
    return text


def hardware_lines(hw: HardwareSample, width: int) -> list[Text]:
    lines = [
        _meter("CPU", hw.cpu_percent / 100, f"{hw.cpu_percent:.0f}%", width),
        _meter(
            "RAM",
            hw.ram_used / max(1, hw.ram_total),
            f"{fmt.gib(hw.ram_used)}/{fmt.gib(hw.ram_total)}G",
            width,
        ),
    ]
    if not hw.gpus:
        note = hw.gpu_note if len(hw.gpu_note) + 4 <= width else hw.gpu_note.split(" (")[0]
        lines.append(Text.assemble(("GPU", "bold"), (" " + note, "dim"), no_wrap=True))
    for gpu in hw.gpus:
        util = "" if gpu.utilization is None else f" {gpu.utilization:.0f}%"
        value = f"{fmt.gib(gpu.memory_used)}/{fmt.gib(gpu.memory_total)}G{util}"
        lines.append(
            _meter(f"GPU{gpu.index}", gpu.memory_used / max(1, gpu.memory_total), value, width)
        )
    return lines


class HardwarePanel(SnapshotPanel):
    PANEL_TITLE = "This machine"
    DIM_WHEN_STALE = False  # read locally: live even while the server is unreachable

    def render_snapshot(self, snapshot: DashboardSnapshot | None, width: int) -> RenderableType:
        hw = snapshot.hardware if snapshot else None
        if hw is None:
            return Text("—", style="dim")
        return Group(*hardware_lines(hw, width))
