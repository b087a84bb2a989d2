"""The wheel ships backends/kernels/quant/tui inside `localserve` and nothing else top-level."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"backends": "localserve/backends", "kernels": "localserve/kernels",
          "quant": "localserve/quant", "tui": "localserve/tui", "localserve": "localserve"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                    "--no-build-isolation", "-q", "-w", str(out)], check=True, timeout=600)
    (path,) = out.glob("localserve-*.whl")
    return zipfile.ZipFile(path)


def test_top_level_is_only_localserve(wheel):
    (top,) = [n for n in wheel.namelist() if n.endswith(".dist-info/top_level.txt")]
    assert wheel.read(top).decode().split() == ["localserve"]
    roots = {n.split("/")[0] for n in wheel.namelist() if not n.split("/")[0].endswith(
        (".dist-info", ".data"))}
    assert roots == {"localserve"}


def test_every_package_folder_is_inside(wheel):
    names = set(wheel.namelist())
    for folder, target in MAPPED.items():
        for dirpath, dirnames, filenames in os.walk(ROOT / folder):
            dirnames[:] = [d for d in dirnames if not d.startswith((".", "__"))]
            if "__init__.py" not in filenames:
                continue
            rel = Path(dirpath).relative_to(ROOT / folder)
            for f in filenames:
                if f.endswith(".py"):
                    inside = f"{target}/{rel.as_posix()}/{f}".replace("/./", "/")
                    assert inside in names, f"{inside} missing from the wheel"


def test_c_sources_ship_for_the_fallback_build(wheel):
    assert any(n.startswith("localserve/kernels/cpu/") and n.endswith(".c")
               for n in wheel.namelist())


@pytest.mark.parametrize("name", ["backends", "kernels", "quant", "tui"])
def test_mapped_folders_are_not_top_level_imports(name):
    # From the repo root the folder is on sys.path; its guard must refuse the import.
    result = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert f"import this package as 'localserve.{name}'" in result.stderr
