"""Record polls to a JSON-lines file and replay them later, without a server.

One line per successful poll: `{"ts": wall time, "stats": {...}, "metrics": "text" | null}`.
Rates are computed on the server's clock inside `stats`, so a replay shows the same numbers
whatever speed it is played at.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from localserve.tui.client import RawSample, ReplayFinished, StatsSource


def encode(sample: RawSample) -> str:
    return json.dumps({"ts": sample.ts, "stats": sample.stats, "metrics": sample.metrics})


def decode(line: str) -> RawSample:
    d = json.loads(line)
    if not isinstance(d, dict) or not isinstance(d.get("stats"), dict):
        raise ValueError("not a localserve recording line")
    return RawSample(float(d.get("ts", 0.0)), d["stats"], d.get("metrics"))


def load_recording(path: str | Path) -> list[RawSample]:
    """All samples of a recording; blank lines are skipped, a bad line names its number."""
    samples = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                samples.append(decode(line))
            except (ValueError, TypeError) as e:
                raise ValueError(f"{path}:{number}: {e}") from e
    return samples


def write_recording(path: str | Path, samples: Iterable[RawSample]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for s in samples:
            f.write(encode(s) + "\n")


class RecordingSource:
    """Wraps a source and appends every sample it fetches to `path`."""

    def __init__(self, inner: StatsSource, path: str | Path) -> None:
        self.inner = inner
        self.path = Path(path)
        self._file: IO[str] | None = None

    @property
    def description(self) -> str:
        return f"{self.inner.description} (recording to {self.path.name})"

    async def fetch(self) -> RawSample:
        sample = await self.inner.fetch()
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in aclose)
        self._file.write(encode(sample) + "\n")
        self._file.flush()
        return sample

    async def aclose(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        await self.inner.aclose()


class ReplaySource:
    """Plays a recording back one sample per fetch; then raises `ReplayFinished`.

    Args:
        samples: a path to a recording, or the samples themselves.
    """

    def __init__(self, samples: str | Path | list[RawSample]) -> None:
        if isinstance(samples, (str, Path)):
            self.name = Path(samples).name
            self.samples = load_recording(samples)
        else:
            self.name = "recording"
            self.samples = list(samples)
        self.position = 0

    @property
    def description(self) -> str:
        return f"replay of {self.name}"

    async def fetch(self) -> RawSample:
        if self.position >= len(self.samples):
            raise ReplayFinished(f"replay finished ({len(self.samples)} samples)")
        sample = self.samples[self.position]
        self.position += 1
        return sample

    async def aclose(self) -> None:
        return None
