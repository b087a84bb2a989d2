"""Turn the server's raw answers (stats JSON, Prometheus text) into the dashboard's data model.

Parsing is tolerant: an older or newer server with missing or extra keys still renders.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from localserve.tui.snapshot import Histogram, RequestInfo, Sample, ServerStats

TTFT = "localserve:time_to_first_token_seconds"
ITL = "localserve:inter_token_latency_seconds"
E2E = "localserve:e2e_request_latency_seconds"
LATENCY_METRICS = (TTFT, ITL, E2E)

_STATES = ("waiting", "running", "preempted")


def _int(d: Mapping[str, Any], key: str, default: int = 0) -> int:
    value = d.get(key)
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def _float(d: Mapping[str, Any], key: str, default: float = 0.0) -> float:
    value = d.get(key)
    try:
        return float(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def parse_request(d: Mapping[str, Any]) -> RequestInfo:
    state = d.get("state")
    return RequestInfo(
        id=str(d.get("id", "?")),
        state=state if state in _STATES else "waiting",  # type: ignore[arg-type]
        prompt_tokens=_int(d, "prompt_tokens"),
        generated_tokens=_int(d, "generated_tokens"),
        priority=_int(d, "priority"),
        age_s=_float(d, "age_s"),
    )


def parse_stats(d: Mapping[str, Any]) -> ServerStats:
    """Parse `EngineStats.to_dict()` plus `server_uptime_s`."""
    total = _int(d, "kv_blocks_total")
    used = _int(d, "kv_blocks_used")
    quant = d.get("quantization")
    server_uptime = d.get("server_uptime_s")
    return ServerStats(
        model=str(d.get("model", "?")),
        backend=str(d.get("backend", "?")),
        device=str(d.get("device", "?")),
        quantization=str(quant) if quant else None,
        max_model_len=_int(d, "max_model_len"),
        block_size=_int(d, "block_size"),
        num_running=_int(d, "num_running"),
        num_waiting=_int(d, "num_waiting"),
        num_preempted_total=_int(d, "num_preempted_total"),
        kv_blocks_total=total,
        kv_blocks_used=used,
        kv_blocks_free=_int(d, "kv_blocks_free", total - used),
        kv_usage=_float(d, "kv_usage", used / max(1, total)),
        prefix_cache_queries=_int(d, "prefix_cache_queries"),
        prefix_cache_hits=_int(d, "prefix_cache_hits"),
        prompt_tokens_total=_int(d, "prompt_tokens_total"),
        generation_tokens_total=_int(d, "generation_tokens_total"),
        uptime_s=_float(d, "uptime_s"),
        server_uptime_s=float(server_uptime) if server_uptime is not None else None,
        requests=tuple(parse_request(r) for r in d.get("requests") or () if isinstance(r, dict)),
    )


def parse_histograms(text: str, names: tuple[str, ...] = LATENCY_METRICS) -> dict[str, Histogram]:
    """Extract the named histograms from Prometheus text, summed over labels (`sum by (le)`).

    Raises:
        ImportError: prometheus-client is not installed.
        ValueError: the text is not valid exposition format.
    """
    from prometheus_client.parser import text_string_to_metric_families

    wanted = set(names)
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    counts: dict[str, float] = defaultdict(float)
    sums: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        if family.name not in wanted or family.type != "histogram":
            continue
        for s in family.samples:
            if s.name == family.name + "_bucket":
                buckets[family.name][float(s.labels["le"])] += s.value
            elif s.name == family.name + "_count":
                counts[family.name] += s.value
            elif s.name == family.name + "_sum":
                sums[family.name] += s.value
    out: dict[str, Histogram] = {}
    for name, by_le in buckets.items():
        ordered = tuple(sorted(by_le.items()))
        if not ordered or not math.isinf(ordered[-1][0]):
            continue  # malformed: Prometheus requires the +Inf bucket
        out[name] = Histogram(ordered, counts.get(name, ordered[-1][1]), sums.get(name, 0.0))
    return out


def sample_time(stats: ServerStats, fallback: float) -> float:
    """The clock rates are measured on: the engine's uptime, else the server's, else ours."""
    if stats.uptime_s > 0:
        return stats.uptime_s
    if stats.server_uptime_s is not None and stats.server_uptime_s > 0:
        return stats.server_uptime_s
    return fallback


def parse_sample(stats: Mapping[str, Any], metrics: str | None, ts: float) -> Sample:
    """One raw poll → `Sample`. Unparseable metrics only cost the latency panel."""
    parsed = parse_stats(stats)
    histograms: dict[str, Histogram] = {}
    has_metrics = False
    if metrics is not None:
        try:
            histograms = parse_histograms(metrics)
            has_metrics = True
        except (ImportError, ValueError):
            pass
    return Sample(sample_time(parsed, ts), parsed, histograms, has_metrics)
