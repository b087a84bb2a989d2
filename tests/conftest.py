"""Test-wide set-up: keep the repo root off sys.path, but `tests.*` importable; the `isa`
fixture that forces each SIMD path of the C kernels.

From the repo root (`python -m pytest` puts it on sys.path), `backends/ kernels/ quant/ tui/`
would be importable as top-level names; transformers probes for an HF package named
`kernels` and would import ours. The tests import their helpers as `tests.helpers...`, so we
register the `tests` package by path instead of through the root.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
if "tests" not in sys.modules:
    _pkg = types.ModuleType("tests")
    _pkg.__path__ = [str(ROOT / "tests")]
    sys.modules["tests"] = _pkg


@pytest.fixture(params=["scalar", "avx2", "avx512"])
def isa(request):
    """Forces each SIMD path of the C kernels this CPU has, in turn (skips the others)."""
    from localserve.kernels import cpu

    if not cpu.available():
        pytest.skip("C CPU kernels unavailable (no compiler)")
    try:
        cpu.set_isa(request.param)
    except ValueError:
        pytest.skip(f"this CPU lacks the {request.param} path (best: {cpu.best_isa()})")
    yield request.param
    cpu.set_isa(None)
