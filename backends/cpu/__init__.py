"""The CPU backend: our C kernels over GGUF blocks kept quantized, plus C paged attention.

The default backend on a machine without a GPU. When the C library cannot be had (no
compiler), the runner says so once and runs the torch reference path instead.
"""

from __future__ import annotations

from localserve.config import EngineConfig
from localserve.interfaces import ModelRunner
from localserve.platform.probe import DeviceInfo


class CpuBackend:
    name = "cpu"

    def probe(self) -> DeviceInfo | None:
        from localserve.platform.probe import probe

        return probe(include_gpus=False)

    def check(self, config: EngineConfig, device: DeviceInfo) -> list[str]:
        if config.model.dtype not in ("auto", "float32"):
            return [f"computes in float32 (asked for {config.model.dtype})"]
        return []

    def create_runner(self, config: EngineConfig, device: DeviceInfo) -> ModelRunner:
        from localserve.backends.cpu.runner import CpuModelRunner

        return CpuModelRunner(config, device)


BACKEND = CpuBackend()
