"""derive.py: rates, bins, histogram quantiles, hit rate, request rows and the fold."""

from __future__ import annotations

import math

import pytest

from localserve.tui.derive import (
    DeriveConfig,
    backoff_delay,
    beyond_last_bound,
    binned_rates,
    disconnected,
    fold,
    histogram_delta,
    histogram_quantile,
    hit_rate,
    latency_view,
    request_rows,
    trim_history,
    window_rate,
)
from localserve.tui.parse import E2E, ITL, TTFT
from localserve.tui.snapshot import (
    DashboardSnapshot,
    HardwareSample,
    Histogram,
    RequestInfo,
    Sample,
    ServerStats,
)

INF = math.inf


def test_hit_rate():
    assert hit_rate(30, 120) == 0.25
    assert hit_rate(0, 0) is None


def test_window_rate_uses_oldest_point_inside_window():
    points = [(0.0, 0.0), (1.0, 10.0), (2.0, 30.0), (12.0, 130.0)]
    assert window_rate(points, 10.0) == 10.0  # (130 - 30) / (12 - 2)
    assert window_rate(points, 100.0) == 130.0 / 12.0  # whole history


def test_window_rate_slow_poll_still_uses_previous_point():
    assert window_rate([(0.0, 0.0), (30.0, 600.0)], 10.0) == 20.0


def test_window_rate_none_cases():
    assert window_rate([], 10) is None
    assert window_rate([(1.0, 5.0)], 10) is None
    assert window_rate([(1.0, 5.0), (1.0, 9.0)], 10) is None  # no elapsed time
    assert window_rate([(1.0, 50.0), (2.0, 9.0)], 10) is None  # counter went backwards


def test_binned_rates_even_and_partial():
    assert binned_rates([(0.0, 0.0), (10.0, 100.0)], 10.0, 10.0, 5.0) == (10.0, 10.0)
    # 40 tokens in [0, 4], none after
    assert binned_rates([(0.0, 0.0), (4.0, 40.0), (10.0, 40.0)], 10.0, 10.0, 5.0) == (8.0, 0.0)
    # only the part of an interval inside the span counts
    assert binned_rates([(0.0, 0.0), (10.0, 100.0)], 10.0, 5.0, 5.0) == (10.0,)


def test_binned_rates_gap_shows_as_zeros():
    points = [(0.0, 0.0), (2.0, 20.0), (8.0, 20.0), (10.0, 40.0)]
    assert binned_rates(points, 10.0, 10.0, 2.0) == (10.0, 0.0, 0.0, 0.0, 10.0)


def test_binned_rates_no_history_is_all_zero():
    assert binned_rates([(3.0, 7.0)], 3.0, 10.0, 5.0) == (0.0, 0.0)


BUCKETS = [(0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (INF, 40.0)]


def test_histogram_quantile_interpolates_like_prometheus():
    assert histogram_quantile(0.5, BUCKETS) == pytest.approx(0.3)  # 0.1 + 0.4 * 10/20
    assert histogram_quantile(0.95, BUCKETS) == pytest.approx(0.9)  # 0.5 + 0.5 * 8/10
    assert histogram_quantile(0.1, BUCKETS) == pytest.approx(0.04)  # first bucket from 0
    assert histogram_quantile(1.0, BUCKETS) == 1.0


def test_histogram_quantile_in_inf_bucket_returns_last_bound():
    buckets = [(1.0, 5.0), (2.0, 8.0), (INF, 10.0)]
    assert histogram_quantile(0.95, buckets) == 2.0
    assert beyond_last_bound(0.95, buckets) is True
    assert beyond_last_bound(0.5, buckets) is False


def test_histogram_quantile_none_cases():
    assert histogram_quantile(0.5, [(0.1, 0.0), (INF, 0.0)]) is None  # no observations
    assert histogram_quantile(0.5, [(INF, 3.0)]) is None  # one bucket
    assert histogram_quantile(0.5, [(0.1, 1.0), (0.2, 3.0)]) is None  # no +Inf


def test_histogram_quantile_skips_empty_buckets():
    # rank 2 is reached in the (0.5, 1.0] bucket; the empty one before it is not used
    assert histogram_quantile(0.5, [(0.1, 0.0), (0.5, 0.0), (1.0, 4.0), (INF, 4.0)]) == 0.75


def test_histogram_delta():
    old = Histogram(((0.1, 1.0), (INF, 2.0)), 2.0, 0.5)
    new = Histogram(((0.1, 4.0), (INF, 7.0)), 7.0, 2.0)
    assert histogram_delta(new, old) == Histogram(((0.1, 3.0), (INF, 5.0)), 5.0, 1.5)
    assert histogram_delta(old, new) is None  # reset
    other = Histogram(((0.2, 4.0), (INF, 7.0)), 7.0, 2.0)
    assert histogram_delta(other, old) is None  # different buckets


def hist(*counts: float) -> Histogram:
    bounds = (0.1, 1.0, INF)
    cumulative = tuple(zip(bounds, counts, strict=True))
    return Histogram(cumulative, counts[-1], 0.0)


def sample(t: float, prompt: int = 0, gen: int = 0, hists=None, requests=()) -> Sample:
    stats = ServerStats(
        prompt_tokens_total=prompt,
        generation_tokens_total=gen,
        uptime_s=t,
        requests=tuple(requests),
    )
    return Sample(t, stats, hists or {}, has_metrics=hists is not None)


def test_latency_view_window_then_all_time():
    old = sample(0.0, hists={TTFT: hist(4, 4, 4), ITL: hist(0, 0, 0), E2E: hist(1, 1, 1)})
    new = sample(30.0, hists={TTFT: hist(4, 8, 8), ITL: hist(10, 10, 10), E2E: hist(1, 1, 1)})
    view = latency_view([old, new], 60.0)
    assert view.ttft.scope == "window" and view.ttft.count == 4
    assert view.ttft.p50 == pytest.approx(0.55)  # 0.1 + 0.9 * 2/4 (the window's 4 only)
    assert view.itl.p50 == pytest.approx(0.05)
    # nothing finished in the window: E2E falls back to all-time rather than going blank
    assert view.e2e.scope == "all" and view.e2e.count == 1
    assert view.e2e.p50 == pytest.approx(0.05)
    # the window no longer reaches the old sample and nothing is new → all-time numbers
    later = sample(100.0, hists=new.histograms)
    view = latency_view([new, later], 60.0)
    assert view.ttft.scope == "all" and view.ttft.count == 8
    assert not latency_view([sample(1.0)], 60.0).available  # no /metrics


def test_request_rows_rates_and_order():
    prev = sample(10.0, requests=[RequestInfo("a", "running", 5, 20, 0, 4.0)])
    cur = [
        RequestInfo("w", "waiting", 7, 0, 0, 1.0),
        RequestInfo("a", "running", 5, 50, 0, 6.0),
        RequestInfo("b", "running", 9, 12, 1, 3.0),
        RequestInfo("p", "preempted", 3, 4, 0, 9.0),
    ]
    rows = request_rows(cur, 12.0, prev)
    assert [r.id for r in rows] == ["a", "b", "p", "w"]
    assert rows[0].tokens_per_s == 15.0  # (50 - 20) / 2 s since the previous poll
    assert rows[1].tokens_per_s == 4.0  # new: 12 tokens over its 3 s age
    assert rows[3].tokens_per_s == 0.0


def test_trim_history_keeps_one_point_before_cutoff():
    history = [sample(float(t)) for t in (0, 100, 250, 300, 400)]
    assert [s.t for s in trim_history(history, 120)] == [250.0, 300.0, 400.0]


def test_fold_rates_reset_and_hardware():
    config = DeriveConfig(rate_window_s=10, series_span_s=20, series_bin_s=10)
    hw = HardwareSample(10.0, 1, 2)
    snap = DashboardSnapshot(source="test")
    snap = fold(snap, sample(100.0, prompt=1000, gen=100), hw, config)
    assert snap.connected and snap.generation_tps is None and snap.num_polls == 1
    snap = fold(snap, sample(110.0, prompt=1500, gen=300), None, config)
    assert snap.prompt_tps == 50.0 and snap.generation_tps == 20.0
    assert snap.generation_series == (0.0, 20.0)
    assert snap.hardware == hw  # kept when this poll had no reading
    # the server restarted: counters start over, history too
    snap = fold(snap, sample(2.0, prompt=10, gen=1), None, config)
    assert len(snap.history) == 1 and snap.generation_tps is None


def test_backoff_doubles_and_caps():
    assert [backoff_delay(n, 0.5, 8.0) for n in (1, 2, 3, 4, 5, 6, 9)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        8.0,
        8.0,
    ]


def test_disconnected_keeps_data_and_counts_attempts():
    snap = fold(DashboardSnapshot(source="t"), sample(1.0, 5, 5), None)
    down = disconnected(snap, "connection refused")
    again = disconnected(down, "connection refused")
    assert (down.connection.attempt, down.connection.retry_in_s) == (1, 0.5)
    assert (again.connection.attempt, again.connection.retry_in_s) == (2, 1.0)
    assert again.stats == snap.stats and not again.connected
    assert fold(again, sample(2.0, 6, 6), None).connection.attempt == 0
