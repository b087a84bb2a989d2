"""Shared fixtures of the kernel tests."""

from __future__ import annotations

import pytest


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
