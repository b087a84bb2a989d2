"""Library state seen from Python: availability, ISA choice, thread count, error codes."""

from __future__ import annotations

import ctypes
import os

import torch

from localserve.kernels.cpu import _loader

ISA_NAMES = ("scalar", "avx2", "avx512", "neon")
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 30}
_ERRORS = {-1: "unsupported type", -2: "bad shape", -3: "index out of range",
           -4: "out of memory"}
_threads_set = False


def lib() -> ctypes.CDLL:
    """The loaded library; raises RuntimeError (with the build error) if there is none."""
    handle = _loader.load()
    if handle is None:
        raise RuntimeError(f"localserve C CPU kernels are unavailable: {_loader.error()}")
    global _threads_set
    if not _threads_set:
        _threads_set = True
        handle.ls_set_num_threads(default_num_threads())
    return handle


def check(rc: int, what: str) -> None:
    if rc != 0:
        raise ValueError(f"{what}: {_ERRORS.get(rc, f'error {rc}')} (C kernel rejected it)")


def available() -> bool:
    """True when the C library is loaded (or could be built and loaded now)."""
    return _loader.load() is not None


def default_num_threads() -> int:
    """$LOCALSERVE_CPU_THREADS, else physical cores usable by this process."""
    env = os.environ.get("LOCALSERVE_CPU_THREADS")
    if env:
        return max(1, int(env))
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or usable
    except ImportError:
        physical = usable
    return max(1, min(physical or 1, usable or 1))


def set_num_threads(n: int) -> None:
    """Threads per kernel call (the caller's thread included)."""
    if n < 1:
        raise ValueError(f"num_threads must be >= 1, got {n}")
    lib().ls_set_num_threads(int(n))


def get_num_threads() -> int:
    return int(lib().ls_get_num_threads())


def isa() -> str:
    """The kernel path in use: 'scalar', 'avx2', 'avx512' or 'neon'."""
    return ISA_NAMES[lib().ls_get_isa()]


def best_isa() -> str:
    """The best path this CPU supports."""
    return ISA_NAMES[lib().ls_best_isa()]


def set_isa(name: str | None) -> str:
    """Forces a path ('scalar', 'avx2', 'avx512', 'neon'); None re-reads LOCALSERVE_CPU_ISA.

    Raises ValueError if the CPU lacks it. Returns the path now in use.
    """
    if name is None:
        return ISA_NAMES[lib().ls_set_isa(-1)]
    if name not in ISA_NAMES:
        raise ValueError(f"unknown ISA {name!r}; expected one of {ISA_NAMES}")
    got = lib().ls_set_isa(ISA_NAMES.index(name))
    if got < 0:
        raise ValueError(f"this CPU does not support the {name!r} kernels (best: {best_isa()})")
    return ISA_NAMES[got]
