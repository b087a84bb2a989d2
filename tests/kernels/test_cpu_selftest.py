"""The C self-test (kernels/cpu/selftest.c): every SIMD path vs the scalar one, in plain C.

Natively it covers the x86 paths again without Python in the loop; cross-compiled for AArch64
and run under qemu-aarch64 it is the only test of the NEON kernels on an x86 machine (skipped
when aarch64-linux-gnu-gcc or qemu-aarch64 is missing; Debian: gcc-aarch64-linux-gnu,
libc6-dev-arm64-cross, qemu-user).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from localserve.kernels.cpu import _build

pytestmark = pytest.mark.cpu
SOURCES = [*_build.source_files(), os.path.join(_build.HERE, "selftest.c")]


def build_and_run(cc: str, out: Path, runner: list[str]) -> str:
    flags = [f for f in _build.CFLAGS if f not in ("-fPIC", "-fvisibility=hidden")]
    build = subprocess.run([cc, *flags, "-Werror", "-o", str(out), *SOURCES, *_build.LIBS,
                            *(["-static"] if runner else [])],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([*runner, str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 failed" in run.stdout
    return run.stdout


def test_selftest_native(tmp_path):
    cc = _build.find_compiler()
    if cc is None:
        pytest.skip("no C compiler")
    out = build_and_run(cc, tmp_path / "selftest", [])
    assert "matmul" in out and "attention" in out


def test_selftest_neon_under_qemu(tmp_path):
    cc, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
    if cc is None or qemu is None:
        pytest.skip("needs aarch64-linux-gnu-gcc and qemu-aarch64 to test the NEON kernels")
    out = build_and_run(cc, tmp_path / "selftest_arm", [qemu])
    assert "isa=3" in out, "the NEON path was not exercised"
