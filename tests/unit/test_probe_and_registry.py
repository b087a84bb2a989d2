"""The hardware probe and backend selection (reasons for each backend passed over)."""

from __future__ import annotations

import pytest

from localserve.backends import get_backend, select
from localserve.config import engine_config
from localserve.platform.probe import probe


def test_probe_reads_this_machine():
    d = probe()
    assert d.logical_cores >= 1 and d.physical_cores >= 1
    assert d.ram_total > d.ram_available > 0
    assert d.cpu_model
    with open("/proc/cpuinfo") as f:
        if " avx2" in f.read():
            assert "avx2" in d.simd
    assert "RAM" in d.describe()


def test_auto_selects_a_cpu_backend_here_and_explains_the_rest():
    selection = select(engine_config(), probe())
    assert selection.backend.name in ("cpu", "reference")
    text = selection.explain()
    assert f"backend: {selection.backend.name}" in text
    assert "cuda" in selection.rejected  # no GPU on CI: said why


def test_forced_backend_and_unknown_backend():
    assert select(engine_config(backend="reference"), probe()).backend.name == "reference"
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        get_backend("tpu")
    with pytest.raises(ValueError, match="cannot run here"):
        select(engine_config(backend="mlx"), probe())


def test_the_backend_flag_offers_every_registered_backend():
    from typing import get_args

    from localserve.backends.registry import BACKENDS
    from localserve.settings import Settings

    assert get_args(Settings.model_fields["backend"].annotation) == ("auto", *BACKENDS)


def test_engine_config_flat_names():
    c = engine_config(max_num_seqs=3, num_kv_blocks=7, scheduling_policy="priority",
                      max_model_len=99, backend="cpu")
    assert (c.scheduler.max_num_seqs, c.cache.num_blocks, c.scheduler.policy,
            c.model.max_model_len, c.backend) == (3, 7, "priority", 99, "cpu")
    with pytest.raises(TypeError, match="unknown engine option 'bogus'"):
        engine_config(bogus=1)
    with pytest.raises(ValueError, match="block_size"):
        engine_config(block_size=3)


def _machine(gpu_gib: float | None):
    from localserve.platform.probe import DeviceInfo, GpuInfo

    gpus = () if gpu_gib is None else (GpuInfo("nvidia", "GPU", int(gpu_gib * 2**30),
                                               int(gpu_gib * 2**30)),)
    return DeviceInfo("cpu", "x86_64", 2, 4, frozenset(), 16 * 2**30, 8 * 2**30, gpus)


@pytest.mark.parametrize(("backend", "gpu_gib", "limits"), [
    ("cuda", 80, (1024, 16384)), ("cuda", 24, (512, 8192)), ("cuda", 8, (256, 4096)),
    ("cpu", None, (64, 2048)), ("cpu", 80, (64, 2048)), ("reference", None, (64, 2048))])
def test_batch_limits_default_by_device(backend, gpu_gib, limits):
    from localserve.engine.factory import with_device_defaults

    s = with_device_defaults(engine_config(), backend, _machine(gpu_gib)).scheduler
    assert (s.max_num_seqs, s.max_num_batched_tokens) == limits
    # What the user sets wins.
    s = with_device_defaults(engine_config(max_num_seqs=3), backend, _machine(gpu_gib)).scheduler
    assert (s.max_num_seqs, s.max_num_batched_tokens) == (3, limits[1])


@pytest.mark.parametrize("version, refused", [
    ("3.6.0", False), ("3.5.0", False), ("3.10.1", False), ("3.5.0+gitabc123", False),
    ("3.4.0", True), ("3.2.0", True), ("2.3.1", True)])
def test_cuda_backend_needs_triton_3_5(version, refused):
    """Older Triton lacks APIs the kernels or start-up call (3.4 keeps triton_key elsewhere,
    3.2 has no tensor descriptors or PDL): the backend says so instead of failing later."""
    from localserve.backends.cuda import triton_too_old

    reason = triton_too_old(version)
    assert (reason is not None) == refused
    if refused:
        assert version in reason and "triton>=3.5" in reason


def test_cuda_backend_check_names_an_old_triton(monkeypatch):
    triton = pytest.importorskip("triton")

    from localserve.backends.cuda import BACKEND

    monkeypatch.setattr(triton, "__version__", "3.4.0")
    reasons = BACKEND.check(engine_config(), probe())
    assert any("triton 3.4.0 is older than 3.5" in r for r in reasons)
