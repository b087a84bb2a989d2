"""What hardware is here: CPU model, cores, SIMD flags, RAM, and any GPU torch can see.

Cheap and safe: reads /proc and psutil, imports torch lazily, never raises.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field

import psutil


@dataclass(frozen=True)
class GpuInfo:
    vendor: str  # "nvidia" | "amd" | "apple"
    name: str
    memory_total: int  # bytes
    memory_free: int
    compute_capability: tuple[int, int] | None = None
    index: int = 0


@dataclass(frozen=True)
class DeviceInfo:
    """The machine as the backends see it."""

    cpu_model: str
    arch: str
    physical_cores: int
    logical_cores: int
    cpu_flags: frozenset[str]
    ram_total: int
    ram_available: int
    gpus: tuple[GpuInfo, ...] = field(default_factory=tuple)

    @property
    def simd(self) -> list[str]:
        names = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "neon", "f16c")
        return [n for n in names if n in self.cpu_flags]

    def describe(self) -> str:
        gpu = ", ".join(f"{g.name} ({g.memory_total / 2**30:.0f} GiB)" for g in self.gpus)
        return (f"{self.cpu_model} ({self.physical_cores} cores, {' '.join(self.simd) or 'no SIMD'}"
                f"), RAM {self.ram_available / 2**30:.1f}/{self.ram_total / 2**30:.1f} GiB free"
                + (f"; GPU: {gpu}" if gpu else ""))


def _cpu_model_and_flags() -> tuple[str, frozenset[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features"):
                    flags.update(value.split())
    except OSError:
        pass
    if platform.machine() in ("arm64", "aarch64"):
        flags.add("neon")  # Advanced SIMD is mandatory on AArch64
    if "asimd" in flags:
        flags.add("neon")
    return model, frozenset(flags)


def _gpus() -> tuple[GpuInfo, ...]:
    """GPUs torch can see; without torch or a device this is empty (never raises)."""
    try:
        import torch
    except Exception:
        return ()
    found = []
    try:
        if torch.cuda.is_available():
            vendor = "amd" if getattr(torch.version, "hip", None) else "nvidia"
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                free, total = torch.cuda.mem_get_info(i)
                found.append(GpuInfo(vendor, props.name, total, free,
                                     (props.major, props.minor), i))
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            mem = psutil.virtual_memory()
            found.append(GpuInfo("apple", "Apple GPU (MPS)", mem.total, mem.available))
    except Exception:
        return tuple(found)
    return tuple(found)


def probe(include_gpus: bool = True) -> DeviceInfo:
    model, flags = _cpu_model_and_flags()
    mem = psutil.virtual_memory()
    logical = os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False) or logical
    return DeviceInfo(model, platform.machine(), physical, logical, flags, mem.total,
                      mem.available, _gpus() if include_gpus else ())
