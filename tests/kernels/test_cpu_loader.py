"""How the C library is found: packaged build if it matches the sources, else a cached build,
else compiled on first use; with no compiler, one warning and a clean 'unavailable'."""

from __future__ import annotations

import glob
import logging
import os
import shutil

import pytest

from localserve.kernels.cpu import _build, _loader, _runtime

pytestmark = pytest.mark.cpu


@pytest.fixture
def source_copy(tmp_path, monkeypatch):
    """A private copy of the sources as the package folder, and an empty cache."""
    src = tmp_path / "src"
    src.mkdir()
    for f in glob.glob(os.path.join(_build.HERE, "ls_*.[ch]")):
        shutil.copy(f, src)
    monkeypatch.setattr(_build, "HERE", str(src))
    monkeypatch.setenv("LOCALSERVE_CACHE_DIR", str(tmp_path / "cache"))
    return src


def test_stale_packaged_library_is_rebuilt_on_first_use(source_copy, tmp_path):
    if _build.find_compiler() is None:
        pytest.skip("no C compiler")
    current = _loader.load()
    if current is not None:  # a library built from other sources must not be picked up
        shutil.copy(current._name, source_copy / "_lscpu.test.so")
    with open(source_copy / "ls_common.h", "a") as f:
        f.write("/* edited */\n")
    lib = _loader._load()
    assert lib is not None, _loader.error()
    assert lib.ls_build_id().decode() == _build.source_hash()
    assert os.path.dirname(lib._name) == str(tmp_path / "cache" / "cpu_kernels")
    assert _loader._load()._name == lib._name  # second time: the cached build, no compile


def test_no_compiler_warns_once_and_reports_unavailable(source_copy, monkeypatch, caplog):
    monkeypatch.setattr(_build, "find_compiler", lambda: None)
    monkeypatch.setattr(_loader, "_tried", False)
    monkeypatch.setattr(_loader, "_lib", None)
    with caplog.at_level(logging.WARNING, logger=_loader.__name__):
        assert _loader.load() is None
        assert _loader.load() is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no C compiler" in warnings[0].getMessage()
    assert not _runtime.available()
    with pytest.raises(RuntimeError, match="unavailable"):
        _runtime.lib()
