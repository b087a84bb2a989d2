"""The Apple Silicon backend (MLX) — not built yet: it reports why it cannot run.

It exists so that `localserve probe` says what is missing on a Mac instead of silently
falling through to the CPU backend.
"""

from __future__ import annotations

import platform

from localserve.config import EngineConfig
from localserve.interfaces import ModelRunner
from localserve.platform.probe import DeviceInfo


class MlxBackend:
    name = "mlx"

    def probe(self) -> DeviceInfo | None:
        if platform.system() != "Darwin" or platform.machine() != "arm64":
            return None
        from localserve.platform.probe import probe

        return probe(include_gpus=False)

    def check(self, config: EngineConfig, device: DeviceInfo) -> list[str]:
        return ["the MLX runner is not implemented yet"]

    def create_runner(self, config: EngineConfig, device: DeviceInfo) -> ModelRunner:
        raise NotImplementedError("the MLX runner is not implemented yet")


BACKEND = MlxBackend()
