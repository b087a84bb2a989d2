"""Prometheus metrics, one CollectorRegistry per app, under `localserve:` and `vllm:` names.

Request-level series (latency histograms, finished requests) are observed by the server as
outputs arrive; engine-level series (queue sizes, KV usage, token and cache counters) are read
from `engine.stats()` at scrape time, so they can never drift from the engine's own counts.
Every series exists twice, `localserve:x` and `vllm:x`, so vLLM's Grafana dashboards work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from localserve.engine.outputs import RequestOutput

logger = logging.getLogger("localserve.server")

PREFIXES = ("localserve", "vllm")
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1,
               0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
               120.0, 240.0, 480.0, 960.0, 1920.0)


class _Twin:
    """One logical series registered under both prefixes; observations go to both."""

    def __init__(self, kind: type[Counter] | type[Histogram], name: str, doc: str,
                 registry: CollectorRegistry, labels: tuple[str, ...], **kw: Any) -> None:
        self.metrics = [kind(f"{p}:{name}", doc, labelnames=labels, registry=registry, **kw)
                        for p in PREFIXES]

    def labels(self, **labels: str) -> _TwinChild:
        return _TwinChild([m.labels(**labels) for m in self.metrics])


class _TwinChild:
    def __init__(self, children: list[Any]) -> None:
        self.children = children

    def inc(self, amount: float = 1) -> None:
        for c in self.children:
            c.inc(amount)

    def observe(self, value: float) -> None:
        for c in self.children:
            c.observe(value)


class _EngineCollector(Collector):
    """Reads gauges and engine counters from `engine.stats()` whenever Prometheus scrapes."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def describe(self) -> list[Metric]:
        return []  # values are read at collect time; nothing to pre-declare

    def collect(self) -> Iterator[Metric]:
        try:
            s = self.engine.stats()
        except Exception:  # a dead engine must not break /metrics
            logger.debug("engine.stats() failed during a scrape", exc_info=True)
            return
        model = str(self.engine.model_name)
        kv_usage = s.kv_blocks_used / s.kv_blocks_total if s.kv_blocks_total else 0.0
        gauges = {
            "num_requests_running": ("Requests in the running batch.", s.num_running),
            "num_requests_waiting": ("Requests waiting to be scheduled.", s.num_waiting),
            "kv_cache_usage_perc": ("Fraction of KV-cache blocks in use (0..1).", kv_usage),
        }
        counters = {
            "prompt_tokens": ("Prompt tokens processed.", s.prompt_tokens_total),
            "generation_tokens": ("Tokens generated.", s.generation_tokens_total),
            "num_preemptions": ("Preemptions of running requests.", s.num_preempted_total),
            "prefix_cache_queries": ("Prompt tokens looked up in the prefix cache.",
                                     s.prefix_cache_queries),
            "prefix_cache_hits": ("Prompt tokens found in the prefix cache.",
                                  s.prefix_cache_hits),
        }
        for prefix in PREFIXES:
            for name, (doc, value) in gauges.items():
                g = GaugeMetricFamily(f"{prefix}:{name}", doc, labels=["model_name"])
                g.add_metric([model], float(value))
                yield g
            for name, (doc, value) in counters.items():
                c = CounterMetricFamily(f"{prefix}:{name}", doc, labels=["model_name"])
                c.add_metric([model], float(value))
                yield c


class ServerMetrics:
    """The app's registry and the request-level series."""

    def __init__(self, engine: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.model_name = str(engine.model_name)
        labels = ("model_name",)
        r = self.registry
        self.success = _Twin(Counter, "request_success", "Finished requests by finish reason.",
                             r, ("model_name", "finished_reason"))
        self.ttft = _Twin(Histogram, "time_to_first_token_seconds", "Time to first token.",
                          r, labels, buckets=TTFT_BUCKETS)
        self.itl = _Twin(Histogram, "inter_token_latency_seconds", "Time between tokens.",
                         r, labels, buckets=ITL_BUCKETS)
        self.e2e = _Twin(Histogram, "e2e_request_latency_seconds", "Arrival to last token.",
                         r, labels, buckets=E2E_BUCKETS)
        self.queue = _Twin(Histogram, "request_queue_time_seconds", "Time spent waiting.",
                           r, labels, buckets=E2E_BUCKETS)
        self.registry.register(_EngineCollector(engine))
        self._ttft = self.ttft.labels(model_name=self.model_name)
        self._itl = self.itl.labels(model_name=self.model_name)
        self._e2e = self.e2e.labels(model_name=self.model_name)
        self._queue = self.queue.labels(model_name=self.model_name)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def tracker(self) -> RequestTracker:
        return RequestTracker(self)

    def finished(self, reason: str) -> None:
        self.success.labels(model_name=self.model_name, finished_reason=reason).inc()


class RequestTracker:
    """Observes one engine request's outputs: inter-token gaps as they arrive, the rest at end."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.m = metrics
        self.last: float | None = None
        self.done = False

    def observe(self, out: RequestOutput) -> None:
        now = time.monotonic()
        num_new = sum(len(d.token_ids) for d in out.outputs)
        if self.last is not None and num_new:
            gap = (now - self.last) / num_new
            for _ in range(num_new):
                self.m._itl.observe(gap)
        if num_new:
            self.last = now
        for d in out.outputs:
            if d.finish_reason is not None:
                self.m.finished(d.finish_reason)
        if out.finished and not self.done:
            self.done = True
            mt = out.metrics
            if mt.first_token_time is not None:
                self.m._ttft.observe(max(0.0, mt.first_token_time - mt.arrival_time))
            if mt.first_scheduled_time is not None:
                self.m._queue.observe(max(0.0, mt.first_scheduled_time - mt.arrival_time))
            end = mt.finished_time if mt.finished_time is not None else now
            self.m._e2e.observe(max(0.0, end - mt.arrival_time))

    def aborted(self, num_choices_left: int) -> None:
        """The client left: count its unfinished choices as aborted."""
        if not self.done:
            self.done = True
            for _ in range(num_choices_left):
                self.m.finished("abort")
