"""The backend registry: name -> lazily imported Backend, and the choice of one for a machine.

Each backend module is imported only when asked for, so a CPU-only install never imports
triton or mlx. Order = preference when `--backend auto`.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass

from localserve.config import EngineConfig
from localserve.interfaces import Backend
from localserve.platform.probe import DeviceInfo

log = logging.getLogger(__name__)

# name -> module defining `BACKEND`; preference order for "auto".
BACKENDS: dict[str, str] = {
    "cuda": "localserve.backends.cuda",
    "mlx": "localserve.backends.mlx",
    "cpu": "localserve.backends.cpu",
    "reference": "localserve.backends.reference",
}


@dataclass(frozen=True)
class Selection:
    backend: Backend
    # Why each backend earlier in the order was passed over (name -> reasons).
    rejected: dict[str, list[str]]

    def explain(self) -> str:
        lines = [f"backend: {self.backend.name}"]
        lines += [f"  not {name}: {'; '.join(why)}" for name, why in self.rejected.items()]
        return "\n".join(lines)


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[name]).BACKEND


def _reasons(name: str, config: EngineConfig,
             device: DeviceInfo) -> tuple[Backend | None, list[str]]:
    try:
        backend = get_backend(name)
    except ImportError as e:
        return None, [f"not installed ({e})"]
    except Exception as e:  # a broken plugin must not stop the others
        return None, [f"failed to import: {e!r}"]
    try:
        if backend.probe() is None:
            return backend, ["no suitable device"]
        return backend, backend.check(config, device)
    except Exception as e:  # a broken plugin must not stop the others
        return backend, [f"check failed: {e}"]


def select(config: EngineConfig, device: DeviceInfo) -> Selection:
    """The first backend in preference order that can run `config`, or the forced one."""
    if config.backend != "auto":
        backend, why = _reasons(config.backend, config, device)
        if backend is None or why:
            raise ValueError(f"backend {config.backend!r} cannot run here: {'; '.join(why)}")
        return Selection(backend, {})
    rejected: dict[str, list[str]] = {}
    for name in BACKENDS:
        backend, why = _reasons(name, config, device)
        if backend is not None and not why:
            return Selection(backend, rejected)
        rejected[name] = why
    raise ValueError("no backend can run this model here:\n" + "\n".join(
        f"  {name}: {'; '.join(why)}" for name, why in rejected.items()))
