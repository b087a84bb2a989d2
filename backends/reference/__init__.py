"""The torch reference backend: the shared torch models with plain-torch attention, fp32, CPU.

Slow and obviously correct; the ground truth the other backends are compared with, and the
fallback when nothing faster can run.
"""

from __future__ import annotations

from localserve.config import EngineConfig
from localserve.interfaces import ModelRunner
from localserve.platform.probe import DeviceInfo


class ReferenceBackend:
    name = "reference"

    def probe(self) -> DeviceInfo | None:
        from localserve.platform.probe import probe

        return probe(include_gpus=False)

    def check(self, config: EngineConfig, device: DeviceInfo) -> list[str]:
        return []  # runs anything the loader can read, on any CPU

    def create_runner(self, config: EngineConfig, device: DeviceInfo) -> ModelRunner:
        import torch

        from localserve.runner.context import ReferenceAttentionOps
        from localserve.runner.torch_runner import TorchModelRunner

        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        return TorchModelRunner(config, torch.device("cpu"), ReferenceAttentionOps())


BACKEND = ReferenceBackend()
