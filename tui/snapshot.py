"""The dashboard's immutable data model: what one poll saw, and what the panels render.

Everything here is a frozen dataclass. The poller folds each new `Sample` into a new
`DashboardSnapshot` (see `localserve.tui.derive.fold`); panels only ever read snapshots.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

RequestState = Literal["waiting", "running", "preempted"]
ConnectionStatus = Literal["connecting", "connected", "disconnected", "replay_done"]


@dataclass(frozen=True)
class RequestInfo:
    """One live request as the server reports it."""

    id: str
    state: RequestState
    prompt_tokens: int
    generated_tokens: int
    priority: int
    age_s: float


@dataclass(frozen=True)
class ServerStats:
    """`GET /v1/localserve/stats`, parsed; missing keys take these defaults."""

    model: str = "?"
    backend: str = "?"
    device: str = "?"
    quantization: str | None = None
    max_model_len: int = 0
    block_size: int = 0
    num_running: int = 0
    num_waiting: int = 0
    num_preempted_total: int = 0
    kv_blocks_total: int = 0
    kv_blocks_used: int = 0
    kv_blocks_free: int = 0
    kv_usage: float = 0.0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    uptime_s: float = 0.0
    server_uptime_s: float | None = None
    requests: tuple[RequestInfo, ...] = ()

    @property
    def num_preempted_now(self) -> int:
        return sum(1 for r in self.requests if r.state == "preempted")


@dataclass(frozen=True)
class Histogram:
    """A Prometheus histogram summed over label sets: cumulative counts per upper bound."""

    buckets: tuple[tuple[float, float], ...]  # (le, cumulative count), ascending, last is +Inf
    count: float
    sum: float


@dataclass(frozen=True)
class Sample:
    """One successful poll: the time it describes (server clock), stats and histograms."""

    t: float  # seconds on the server's uptime clock; rates are deltas of this
    stats: ServerStats
    histograms: dict[str, Histogram] = field(default_factory=dict)
    has_metrics: bool = False


@dataclass(frozen=True)
class RequestRow:
    """One line of the live requests table, with its derived token rate."""

    id: str
    state: RequestState
    prompt_tokens: int
    generated_tokens: int
    tokens_per_s: float
    age_s: float
    priority: int


@dataclass(frozen=True)
class LatencySummary:
    """p50/p95 of one latency histogram; None = no observations."""

    p50: float | None = None
    p95: float | None = None
    count: float = 0.0
    # The quantile fell in the +Inf bucket, so the value shown is the largest finite bound.
    p50_beyond: bool = False
    p95_beyond: bool = False
    scope: Literal["window", "all"] = "all"  # over the last `LatencyView.window_s`, or ever


@dataclass(frozen=True)
class LatencyView:
    ttft: LatencySummary = LatencySummary()
    itl: LatencySummary = LatencySummary()
    e2e: LatencySummary = LatencySummary()
    window_s: float = 60.0
    available: bool = True  # False: the server has no /metrics (or it did not parse)

    @property
    def summaries(self) -> tuple[LatencySummary, LatencySummary, LatencySummary]:
        return (self.ttft, self.itl, self.e2e)


@dataclass(frozen=True)
class GpuSample:
    index: int
    name: str
    memory_used: int  # bytes
    memory_total: int  # bytes
    utilization: float | None  # percent


@dataclass(frozen=True)
class HardwareSample:
    """This machine (where the TUI runs, not necessarily the server)."""

    cpu_percent: float
    ram_used: int  # bytes
    ram_total: int  # bytes
    gpus: tuple[GpuSample, ...] = ()
    gpu_note: str = "n/a"  # why there are no GPUs listed


@dataclass(frozen=True)
class ConnectionState:
    status: ConnectionStatus = "connecting"
    message: str = ""
    attempt: int = 0  # consecutive failures
    retry_in_s: float | None = None


@dataclass(frozen=True)
class DashboardSnapshot:
    """Everything the panels show, derived from the polls so far."""

    source: str
    connection: ConnectionState = ConnectionState()
    stats: ServerStats | None = None
    history: tuple[Sample, ...] = ()  # recent samples, oldest first (for rates and windows)
    prompt_tps: float | None = None
    generation_tps: float | None = None
    prompt_series: tuple[float, ...] = ()  # tok/s per time bin, oldest first
    generation_series: tuple[float, ...] = ()
    series_span_s: float = 300.0
    latency: LatencyView = LatencyView()
    prefix_hit_rate: float | None = None
    requests: tuple[RequestRow, ...] = ()
    hardware: HardwareSample | None = None
    num_polls: int = 0

    @property
    def connected(self) -> bool:
        return self.connection.status == "connected"
