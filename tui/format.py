"""Short human formats for numbers in narrow panels (pure; shared by the widgets)."""

from __future__ import annotations

EMPTY = "—"


def duration(seconds: float | None) -> str:
    """3.2s, 4m05s, 1h02m, 3d04h."""
    if seconds is None:
        return EMPTY
    s = int(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def latency(seconds: float | None, beyond: bool = False) -> str:
    """0.8ms, 35ms, 1.24s, 12.5s; `beyond` (past the last histogram bound) prefixes ">"."""
    if seconds is None:
        return EMPTY
    if beyond:
        return ">" + latency(seconds)
    if seconds < 0.01:
        return f"{seconds * 1000:.1f}ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 10:
        return f"{seconds:.2f}s"
    return f"{seconds:.1f}s"


def rate(per_s: float | None) -> str:
    """Tokens per second with a width that stays small: 0.0, 12.3, 812, 12.4k."""
    if per_s is None:
        return EMPTY
    if per_s < 100:
        return f"{per_s:.1f}"
    if per_s < 10_000:
        return f"{per_s:.0f}"
    return f"{per_s / 1000:.1f}k"


def count(n: float) -> str:
    """1234 → 1,234; 1.2M above a million."""
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}M"
    return f"{int(n):,}"


def gib(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:.1f}"


def percent(fraction: float | None) -> str:
    return EMPTY if fraction is None else f"{fraction * 100:.1f}%"


def bar(fraction: float, width: int) -> str:
    """A text bar of `width` cells, eighth-block resolution: ████▌░░░."""
    width = max(1, width)
    fraction = min(1.0, max(0.0, fraction))
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    partial = " ▏▎▍▌▋▊▉"[part] if part else ""
    return ("█" * full + partial.strip() + "░" * width)[:width]


SPARK_BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: tuple[float, ...] | list[float], width: int) -> str:
    """Zero-based bars, one cell per slice of `values` (max of the slice), stretched to `width`.

    Zero-based (not min–max) so that a steady 800 tok/s does not look like wild swings.
    """
    n = len(values)
    if width <= 0:
        return ""
    if n == 0:
        return " " * width
    top = max(values)
    cells = []
    for j in range(width):
        lo = j * n // width
        hi = max((j + 1) * n // width, lo + 1)
        v = max(values[lo:hi])
        if v <= 0 or top <= 0:
            cells.append(" ")
        else:
            cells.append(SPARK_BARS[min(7, int(v / top * 8 - 1e-9))])
    return "".join(cells)
