"""The polling client: fetch raw stats over HTTP (or a recording) and fold them into snapshots.

`HttpSource` knows the server's HTTP contract and nothing about the dashboard;
`DashboardClient.poll()` turns one fetch (or its failure) into the next immutable
`DashboardSnapshot`. The TUI never imports the engine, so it attaches to any localserve.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import httpx

from localserve.tui.derive import DeriveConfig, disconnected, fold
from localserve.tui.parse import parse_sample
from localserve.tui.snapshot import ConnectionState, DashboardSnapshot, HardwareSample

STATS_PATH = "/v1/localserve/stats"
METRICS_PATH = "/metrics"
HEALTH_PATH = "/health"


@dataclass(frozen=True)
class RawSample:
    """What one poll fetched, exactly as recorded to and replayed from a file."""

    ts: float  # wall-clock time of the poll (time.time())
    stats: dict[str, Any]
    metrics: str | None  # Prometheus text; None when /metrics was unavailable


class SourceError(Exception):
    """The poll failed; the message is shown to the user as is."""


class ReplayFinished(SourceError):
    """A recording has no more samples."""


class StatsSource(Protocol):
    """Where samples come from: a live server or a recording."""

    @property
    def description(self) -> str: ...

    async def fetch(self) -> RawSample: ...

    async def aclose(self) -> None: ...


class HttpSource:
    """Polls a localserve over HTTP. `transport` lets tests plug in `httpx.MockTransport`."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=timeout_s, transport=transport
        )
        self._clock = clock

    @property
    def description(self) -> str:
        return self.url

    async def fetch(self) -> RawSample:
        try:
            stats_resp, metrics_resp = await asyncio.gather(
                self._client.get(STATS_PATH), self._client.get(METRICS_PATH)
            )
        except httpx.TimeoutException as e:
            raise SourceError(f"timed out ({type(e).__name__})") from e
        except httpx.HTTPError as e:
            raise SourceError(_describe(e)) from e
        if stats_resp.status_code in (401, 403):
            raise SourceError(f"HTTP {stats_resp.status_code}: check --api-key")
        if stats_resp.status_code != 200:
            raise SourceError(await self._not_ok(stats_resp.status_code))
        try:
            stats = stats_resp.json()
        except ValueError as e:
            raise SourceError("stats endpoint did not return JSON") from e
        if not isinstance(stats, dict):
            raise SourceError("stats endpoint did not return a JSON object")
        metrics = metrics_resp.text if metrics_resp.status_code == 200 else None
        return RawSample(self._clock(), stats, metrics)

    async def _not_ok(self, status: int) -> str:
        """Explain a failed stats call; /health tells a starting server from a broken one."""
        try:
            health = await self._client.get(HEALTH_PATH)
        except httpx.HTTPError:
            return f"HTTP {status} from {STATS_PATH}"
        if health.status_code == 503:
            return "server not ready yet (/health 503)"
        return f"HTTP {status} from {STATS_PATH} (/health {health.status_code})"

    async def aclose(self) -> None:
        await self._client.aclose()


def _describe(e: httpx.HTTPError) -> str:
    if isinstance(e, httpx.ConnectError):
        return "connection refused" if "refused" in str(e).lower() else "cannot connect"
    return type(e).__name__


class HardwareReader(Protocol):
    def sample(self) -> HardwareSample | None: ...


class DashboardClient:
    """Turns fetches into snapshots. Holds only the latest (immutable) snapshot.

    Args:
        source: where samples come from.
        hardware: reads this machine's CPU/RAM/GPU; None shows "n/a".
        config: windows for rates and percentiles.
        poll_interval_s: delay between successful polls.
        backoff_base_s, backoff_max_s: retry delays after failures (doubling, capped).
    """

    def __init__(
        self,
        source: StatsSource,
        hardware: HardwareReader | None = None,
        *,
        config: DeriveConfig | None = None,
        poll_interval_s: float = 1.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
    ) -> None:
        self.source = source
        self.hardware = hardware
        self.config = config or DeriveConfig()
        self.poll_interval_s = poll_interval_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.snapshot = DashboardSnapshot(source=source.description)

    @property
    def finished(self) -> bool:
        """No more samples will come (end of a recording)."""
        return self.snapshot.connection.status == "replay_done"

    @property
    def next_delay_s(self) -> float:
        retry = self.snapshot.connection.retry_in_s
        return retry if retry is not None else self.poll_interval_s

    async def poll(self) -> DashboardSnapshot:
        """Fetch once and return the next snapshot. Never raises for server trouble."""
        hw = self._read_hardware()
        try:
            raw = await self.source.fetch()
        except ReplayFinished as e:
            state = ConnectionState("replay_done", str(e) or "end of recording")
            self.snapshot = replace(self.snapshot, connection=state)
        except SourceError as e:
            self._fail(str(e), hw)
        except Exception as e:  # a dashboard must outlive any one bad answer
            self._fail(f"{type(e).__name__}: {e}", hw)
        else:
            try:
                sample = parse_sample(raw.stats, raw.metrics, raw.ts)
            except Exception as e:
                self._fail(f"unreadable stats ({type(e).__name__}: {e})", hw)
            else:
                self.snapshot = fold(self.snapshot, sample, hw, self.config)
        return self.snapshot

    def _read_hardware(self) -> HardwareSample | None:
        if self.hardware is None:
            return None
        try:
            return self.hardware.sample()
        except Exception:  # e.g. psutil denied in a container: show the last reading
            return None

    def _fail(self, message: str, hw: HardwareSample | None) -> None:
        snap = disconnected(self.snapshot, message, self.backoff_base_s, self.backoff_max_s)
        self.snapshot = replace(snap, hardware=hw) if hw is not None else snap

    async def aclose(self) -> None:
        await self.source.aclose()
