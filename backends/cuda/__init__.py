"""The GPU backend for NVIDIA (CUDA) and AMD (ROCm) through Triton and torch alone.

No NVIDIA-only library is used, so the same code serves ROCm builds of torch
(`torch.version.hip`). ROCm is untested here (no AMD GPU on our machines): its logic is the
CUDA path's, which is tested on an H100.
"""

from __future__ import annotations

import re

from localserve.config import EngineConfig
from localserve.interfaces import ModelRunner
from localserve.platform.probe import DeviceInfo

# The oldest Triton with every API the kernels and start-up call (tensor descriptors, PDL's
# gdc_wait, triton.runtime.cache.triton_key, the launch_pdl option; 3.4 keeps triton_key
# elsewhere). The GPU runs were on 3.6.0 (docs/benchmarks.md); 3.5 is checked by API only.
MIN_TRITON = (3, 5)


def triton_too_old(version: str) -> str | None:
    """Why Triton `version` cannot run this backend, or None."""
    if tuple(int(n) for n in re.findall(r"\d+", version)[:2]) >= MIN_TRITON:
        return None
    need = ".".join(map(str, MIN_TRITON))
    return (f"triton {version} is older than {need}, which the GPU kernels need: upgrade torch "
            f"(2.9+ brings triton {need}+) or `pip install -U 'triton>={need}'`")


class CudaBackend:
    name = "cuda"

    def probe(self) -> DeviceInfo | None:
        try:
            import torch

            if not torch.cuda.is_available():
                return None
        except Exception:
            return None
        from localserve.platform.probe import probe

        return probe()

    def check(self, config: EngineConfig, device: DeviceInfo) -> list[str]:
        reasons = []
        gpus = [g for g in device.gpus if g.vendor in ("nvidia", "amd")]
        if not gpus:
            reasons.append("no NVIDIA or AMD GPU visible to torch")
        try:
            import triton
        except ImportError:
            reasons.append("triton is not installed (pip install 'localserve[gpu]')")
        else:
            old = triton_too_old(triton.__version__)
            if old:
                reasons.append(old)
        if gpus and config.model.dtype == "bfloat16" and gpus[0].vendor == "nvidia" \
                and (gpus[0].compute_capability or (0, 0)) < (8, 0):
            reasons.append(f"{gpus[0].name} has no bf16: use --dtype float16")
        return reasons

    def create_runner(self, config: EngineConfig, device: DeviceInfo) -> ModelRunner:
        import torch

        from localserve.backends.cuda.runner import CudaModelRunner

        return CudaModelRunner(config, torch.device("cuda", 0))


BACKEND = CudaBackend()
