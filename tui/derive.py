"""Pure functions that turn successive samples into the numbers the dashboard shows.

Rates come from deltas of cumulative counters on the server's own clock, percentiles from
histogram buckets the way Prometheus' `histogram_quantile` estimates them. No I/O, no clocks:
`fold(previous_snapshot, new_sample)` is the whole state transition of the dashboard.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from localserve.tui.parse import E2E, ITL, TTFT
from localserve.tui.snapshot import (
    ConnectionState,
    DashboardSnapshot,
    HardwareSample,
    Histogram,
    LatencySummary,
    LatencyView,
    RequestInfo,
    RequestRow,
    Sample,
)

Point = tuple[float, float]  # (t seconds, cumulative value)

_STATE_ORDER = {"running": 0, "preempted": 1, "waiting": 2}


@dataclass(frozen=True)
class DeriveConfig:
    rate_window_s: float = 10.0  # the headline tok/s: average over this many seconds
    series_span_s: float = 300.0  # sparklines cover this much history
    series_bin_s: float = 5.0  # one sparkline value per bin
    latency_window_s: float = 60.0  # p50/p95 over this window when it saw requests


def hit_rate(hits: float, queries: float) -> float | None:
    """Fraction of looked-up prompt tokens found in the prefix cache; None before any lookup."""
    return hits / queries if queries > 0 else None


def window_rate(points: Sequence[Point], window_s: float) -> float | None:
    """Average rate of a cumulative counter over the last `window_s` seconds.

    Uses the oldest point inside the window (and at least the previous point), so a slow
    poll still yields a rate. None with fewer than two points, no elapsed time or a reset.
    """
    if len(points) < 2:
        return None
    t_end, v_end = points[-1]
    start = len(points) - 2
    while start > 0 and points[start - 1][0] >= t_end - window_s:
        start -= 1
    t0, v0 = points[start]
    if t_end <= t0 or v_end < v0:
        return None
    return (v_end - v0) / (t_end - t0)


def binned_rates(
    points: Sequence[Point], end: float, span_s: float, bin_s: float
) -> tuple[float, ...]:
    """Rate per time bin over [end - span_s, end], oldest bin first.

    Each interval's counter delta is spread evenly over the time it covers, so irregular
    polling and gaps (pauses, disconnects) are drawn where they happened, as zeros.
    """
    num_bins = max(1, round(span_s / bin_s))
    start = end - num_bins * bin_s
    totals = [0.0] * num_bins
    for (t0, v0), (t1, v1) in itertools.pairwise(points):
        if t1 <= t0 or v1 < v0 or t1 <= start:
            continue
        per_s = (v1 - v0) / (t1 - t0)
        lo = max(t0, start)
        first = int((lo - start) // bin_s)
        for b in range(first, num_bins):
            b_lo = start + b * bin_s
            b_hi = b_lo + bin_s
            if b_lo >= t1:
                break
            overlap = min(t1, b_hi) - max(lo, b_lo)
            if overlap > 0:
                totals[b] += per_s * overlap
    return tuple(total / bin_s for total in totals)


def histogram_quantile(q: float, buckets: Sequence[Point]) -> float | None:
    """Estimate the q-quantile from cumulative buckets [(le, count)…, (+Inf, count)].

    Same rules as Prometheus: linear interpolation inside the bucket holding the rank, the
    first bucket starts at 0, a rank in the +Inf bucket returns the highest finite bound.
    None when there are no observations or fewer than two buckets.
    """
    if len(buckets) < 2 or not math.isinf(buckets[-1][0]):
        return None
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    b = next(i for i, (_, count) in enumerate(buckets) if count >= rank)
    if b == len(buckets) - 1:
        return buckets[-2][0]
    upper, count = buckets[b]
    if b == 0:
        if upper <= 0:
            return upper
        lower, below = 0.0, 0.0
    else:
        lower, below = buckets[b - 1]
    in_bucket = count - below
    if in_bucket <= 0:
        return upper
    return lower + (upper - lower) * (rank - below) / in_bucket


def beyond_last_bound(q: float, buckets: Sequence[Point]) -> bool:
    """The q-quantile lies in the +Inf bucket: the estimate is only a lower bound."""
    if len(buckets) < 2 or buckets[-1][1] <= 0:
        return False
    return buckets[-2][1] < q * buckets[-1][1]


def histogram_delta(new: Histogram, old: Histogram) -> Histogram | None:
    """Observations between two scrapes; None when the buckets changed or the counter reset."""
    if [le for le, _ in new.buckets] != [le for le, _ in old.buckets] or new.count < old.count:
        return None
    buckets = tuple(
        (le, c - c_old) for (le, c), (_, c_old) in zip(new.buckets, old.buckets, strict=True)
    )
    return Histogram(buckets, new.count - old.count, new.sum - old.sum)


def summarize(h: Histogram | None, scope: str = "all") -> LatencySummary:
    if h is None or h.count <= 0:
        return LatencySummary()
    return LatencySummary(
        p50=histogram_quantile(0.5, h.buckets),
        p95=histogram_quantile(0.95, h.buckets),
        count=h.count,
        p50_beyond=beyond_last_bound(0.5, h.buckets),
        p95_beyond=beyond_last_bound(0.95, h.buckets),
        scope=scope,  # type: ignore[arg-type]
    )


def latency_summary(latest: Histogram | None, base: Histogram | None) -> LatencySummary:
    """Over the window (latest − base) when it saw observations, else all-time (latest)."""
    if latest is not None and base is not None and base is not latest:
        delta = histogram_delta(latest, base)
        if delta is not None and delta.count > 0:
            return summarize(delta, "window")
    return summarize(latest, "all")


def latency_view(history: Sequence[Sample], window_s: float) -> LatencyView:
    """p50/p95 per histogram over the last `window_s` seconds, each falling back to all-time
    when nothing was observed in the window (an idle minute keeps showing the last numbers).
    """
    if not history or not history[-1].has_metrics:
        return LatencyView(window_s=window_s, available=False)
    latest = history[-1]
    base = next((s for s in history if s.t >= latest.t - window_s and s.has_metrics), latest)

    def one(name: str) -> LatencySummary:
        return latency_summary(latest.histograms.get(name), base.histograms.get(name))

    return LatencyView(ttft=one(TTFT), itl=one(ITL), e2e=one(E2E), window_s=window_s)


def request_rows(
    requests: Sequence[RequestInfo], t: float, previous: Sample | None
) -> tuple[RequestRow, ...]:
    """Table rows with tok/s: the delta since the previous poll if the request was in it,
    else generated tokens over its age. Running first, then preempted, then waiting; oldest first.
    """
    before = {r.id: r.generated_tokens for r in previous.stats.requests} if previous else {}
    dt = t - previous.t if previous else 0.0
    rows = []
    for r in requests:
        if r.id in before and dt > 0 and r.generated_tokens >= before[r.id]:
            tps = (r.generated_tokens - before[r.id]) / dt
        else:
            tps = r.generated_tokens / r.age_s if r.age_s > 0 else 0.0
        rows.append(
            RequestRow(r.id, r.state, r.prompt_tokens, r.generated_tokens, tps, r.age_s, r.priority)
        )
    rows.sort(key=lambda row: (_STATE_ORDER.get(row.state, 3), -row.age_s, row.id))
    return tuple(rows)


def is_reset(previous: Sample, sample: Sample) -> bool:
    """The server restarted (its clock or a cumulative counter went backwards)."""
    a, b = previous.stats, sample.stats
    return (
        sample.t < previous.t
        or b.prompt_tokens_total < a.prompt_tokens_total
        or b.generation_tokens_total < a.generation_tokens_total
    )


def trim_history(history: Sequence[Sample], keep_s: float) -> tuple[Sample, ...]:
    """Keep samples newer than `keep_s`, plus the one just before (it starts the first interval)."""
    if not history:
        return ()
    cutoff = history[-1].t - keep_s
    first = 0
    for i, s in enumerate(history):
        if s.t >= cutoff:
            first = max(0, i - 1)
            break
    return tuple(history[first:])


def fold(
    previous: DashboardSnapshot,
    sample: Sample,
    hardware: HardwareSample | None,
    config: DeriveConfig = DeriveConfig(),
) -> DashboardSnapshot:
    """The dashboard's state transition: previous snapshot + one new sample → new snapshot."""
    history = previous.history
    if history and is_reset(history[-1], sample):
        history = ()
    last = history[-1] if history else None
    keep_s = max(config.series_span_s, config.latency_window_s, config.rate_window_s)
    history = trim_history((*history, sample), keep_s)
    prompt = [(s.t, float(s.stats.prompt_tokens_total)) for s in history]
    gen = [(s.t, float(s.stats.generation_tokens_total)) for s in history]
    stats = sample.stats
    return replace(
        previous,
        connection=ConnectionState("connected"),
        stats=stats,
        history=history,
        prompt_tps=window_rate(prompt, config.rate_window_s),
        generation_tps=window_rate(gen, config.rate_window_s),
        prompt_series=binned_rates(prompt, sample.t, config.series_span_s, config.series_bin_s),
        generation_series=binned_rates(gen, sample.t, config.series_span_s, config.series_bin_s),
        series_span_s=config.series_span_s,
        latency=latency_view(history, config.latency_window_s),
        prefix_hit_rate=hit_rate(stats.prefix_cache_hits, stats.prefix_cache_queries),
        requests=request_rows(stats.requests, sample.t, last),
        hardware=hardware if hardware is not None else previous.hardware,
        num_polls=previous.num_polls + 1,
    )


def backoff_delay(attempt: int, base_s: float = 0.5, max_s: float = 8.0) -> float:
    """Seconds to wait before retry number `attempt` (1-based): base, 2·base, 4·base… capped."""
    return min(max_s, base_s * 2 ** max(0, attempt - 1))


def disconnected(
    previous: DashboardSnapshot, message: str, base_s: float = 0.5, max_s: float = 8.0
) -> DashboardSnapshot:
    """Mark the snapshot disconnected with the next retry's delay; the last data stays visible."""
    was_down = previous.connection.status == "disconnected"
    attempt = previous.connection.attempt + 1 if was_down else 1
    state = ConnectionState("disconnected", message, attempt, backoff_delay(attempt, base_s, max_s))
    return replace(previous, connection=state, num_polls=previous.num_polls + 1)
