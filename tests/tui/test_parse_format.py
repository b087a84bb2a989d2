"""parse.py (stats JSON, Prometheus text) and format.py (the panels' number formats)."""

from __future__ import annotations

import math

from localserve.tui import format as fmt
from localserve.tui.parse import E2E, TTFT, parse_histograms, parse_sample, parse_stats

METRICS = """\
# HELP localserve:time_to_first_token_seconds Time to first token.
# TYPE localserve:time_to_first_token_seconds histogram
localserve:time_to_first_token_seconds_bucket{le="0.1",model_name="a"} 1.0
localserve:time_to_first_token_seconds_bucket{le="0.5",model_name="a"} 3.0
localserve:time_to_first_token_seconds_bucket{le="+Inf",model_name="a"} 4.0
localserve:time_to_first_token_seconds_count{model_name="a"} 4.0
localserve:time_to_first_token_seconds_sum{model_name="a"} 1.5
localserve:time_to_first_token_seconds_bucket{le="0.1",model_name="b"} 2.0
localserve:time_to_first_token_seconds_bucket{le="0.5",model_name="b"} 2.0
localserve:time_to_first_token_seconds_bucket{le="+Inf",model_name="b"} 2.0
localserve:time_to_first_token_seconds_count{model_name="b"} 2.0
localserve:time_to_first_token_seconds_sum{model_name="b"} 0.1
# TYPE localserve:num_requests_running gauge
localserve:num_requests_running 3.0
"""


def test_parse_histograms_sums_label_sets():
    hists = parse_histograms(METRICS)
    assert set(hists) == {TTFT}
    h = hists[TTFT]
    assert h.buckets == ((0.1, 3.0), (0.5, 5.0), (math.inf, 6.0))
    assert (h.count, h.sum) == (6.0, 1.6)


def test_parse_stats_tolerates_missing_and_bad_values():
    s = parse_stats(
        {
            "model": "m",
            "kv_blocks_total": 10,
            "kv_blocks_used": "4",
            "num_running": None,
            "requests": [{"id": 7, "state": "bogus"}, "junk"],
        }
    )
    assert (s.model, s.backend, s.kv_blocks_free, s.kv_usage, s.num_running) == (
        "m",
        "?",
        6,
        0.4,
        0,
    )
    assert len(s.requests) == 1 and s.requests[0].id == "7" and s.requests[0].state == "waiting"


def test_parse_sample_clock_and_bad_metrics():
    s = parse_sample({"uptime_s": 12.5}, "not { prometheus", ts=99.0)
    assert s.t == 12.5 and not s.has_metrics and s.histograms == {}
    s = parse_sample({"server_uptime_s": 3.0}, None, ts=99.0)
    assert s.t == 3.0
    s = parse_sample({}, METRICS, ts=99.0)
    assert s.t == 99.0 and s.has_metrics and E2E not in s.histograms


def test_durations_and_latencies():
    assert [fmt.duration(x) for x in (None, 3.21, 42, 245, 3725, 273600)] == [
        "—",
        "3.2s",
        "42s",
        "4m05s",
        "1h02m",
        "3d04h",
    ]
    assert [fmt.latency(x) for x in (None, 0.0008, 0.035, 1.239, 12.5)] == [
        "—",
        "0.8ms",
        "35ms",
        "1.24s",
        "12.5s",
    ]
    assert fmt.latency(10.0, beyond=True) == ">10.0s"


def test_rates_counts_percent():
    assert [fmt.rate(x) for x in (None, 0, 12.34, 812.4, 12400)] == [
        "—",
        "0.0",
        "12.3",
        "812",
        "12.4k",
    ]
    assert (fmt.count(1234), fmt.count(2_500_000)) == ("1,234", "2.5M")
    assert (fmt.percent(0.4215), fmt.percent(None)) == ("42.1%", "—")


def test_bar():
    assert fmt.bar(0.5, 8) == "████░░░░"
    assert fmt.bar(0.0, 4) == "░░░░"
    assert fmt.bar(1.2, 4) == "████"
    assert fmt.bar(0.3, 5) == "█▌░░░"  # 12 eighths: one full cell and a half


def test_sparkline_zero_based_and_stretched():
    assert fmt.sparkline([0, 4, 8], 3) == " ▄█"
    assert fmt.sparkline([800, 810], 2) == "██"  # steady load stays high, not min–max
    assert fmt.sparkline([1, 8], 4) == "▁▁██"  # stretched
    assert fmt.sparkline([1, 8, 0, 0], 2) == "█ "  # max of each slice
    assert fmt.sparkline([], 3) == "   "
