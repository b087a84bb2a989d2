"""Hardware of *this machine* (where the TUI runs, which may not be the server's machine).

CPU and RAM come from psutil; GPUs from NVML (`pynvml`, shipped as nvidia-ml-py) when it
imports and initialises, else the panel says why there is nothing to show.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from localserve.tui.snapshot import GpuSample, HardwareSample


def _load_nvml() -> tuple[ModuleType | None, str]:
    try:
        nvml = importlib.import_module("pynvml")
    except ImportError:
        return None, "n/a (no pynvml)"
    try:
        nvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return None, f"n/a ({type(e).__name__})"
    return nvml, ""


def _decode(name: Any) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)


class LocalHardware:
    """Samples psutil and NVML. Never raises: a failing probe becomes "n/a"."""

    def __init__(self, nvml: ModuleType | None = None, gpu_note: str | None = None) -> None:
        import psutil

        self._psutil = psutil
        if nvml is None and gpu_note is None:
            nvml, gpu_note = _load_nvml()
        self._nvml = nvml
        self._gpu_note = gpu_note or ""
        psutil.cpu_percent(interval=None)  # the first call only starts the measurement

    def _gpus(self) -> tuple[GpuSample, ...]:
        nvml = self._nvml
        if nvml is None:
            return ()
        gpus = []
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                util: float | None = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            except Exception:  # not supported on some devices (e.g. MIG slices)
                util = None
            name = _decode(nvml.nvmlDeviceGetName(handle))
            gpus.append(GpuSample(i, name, int(mem.used), int(mem.total), util))
        return tuple(gpus)

    def sample(self) -> HardwareSample:
        mem = self._psutil.virtual_memory()
        note = self._gpu_note
        try:
            gpus = self._gpus()
        except Exception as e:
            gpus, note = (), f"n/a ({type(e).__name__})"
        if self._nvml is not None and not gpus and not note:
            note = "none found"
        return HardwareSample(
            cpu_percent=float(self._psutil.cpu_percent(interval=None)),
            ram_used=int(mem.total - mem.available),
            ram_total=int(mem.total),
            gpus=gpus,
            gpu_note=note,
        )


class FixedHardware:
    """Always the same reading: for snapshot tests and replays that must be deterministic."""

    def __init__(self, sample: HardwareSample) -> None:
        self._sample = sample

    def sample(self) -> HardwareSample:
        return self._sample
