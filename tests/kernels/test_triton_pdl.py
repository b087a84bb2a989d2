"""Programmatic dependent launch (PDL): used only where it applies, and safe where it is.

With PDL a kernel may start while the previous one still runs; each kernel's `pdl_wait`
must hold it back until the previous kernel's writes are visible. The choice of launch
keywords runs everywhere; the chain test needs an NVIDIA Hopper-or-newer GPU (the device
machine runs it via `benchmarks/gpu_session.sh tests`), and `test_triton_compile.py` checks
on the CPU that every sm_90 build starts with the wait.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from localserve.kernels.triton import _common, act_and_mul, rms_norm
from localserve.kernels.triton._common import pdl_launch, pdl_override, pdl_where_supported
from localserve.kernels.triton.gemv import gemv
from localserve.kernels.triton.testing import ELEMENTWISE_TOL, rel_error

ON = {"USE_PDL": True, "launch_pdl": True}
OFF = {"USE_PDL": False}


def test_cpu_tensors_launch_without_pdl():
    assert pdl_launch(torch.device("cpu")) == OFF


def test_override_forces_either_way():
    with pdl_override(True):
        assert pdl_launch(torch.device("cpu")) == ON
        with pdl_override(False):
            assert pdl_launch(torch.device("cuda", 0)) == OFF
        assert pdl_launch(torch.device("cpu")) == ON
    assert pdl_launch(torch.device("cpu")) == OFF


@pytest.mark.parametrize("capable", [True, False])
def test_gpus_use_pdl_only_when_asked_and_capable(monkeypatch, capable):
    monkeypatch.setattr(_common, "interpreting", lambda: False)
    monkeypatch.setattr(_common, "_gpu_arch", lambda index: "sm_90" if capable else "sm_89")
    cuda = torch.device("cuda", 0)
    monkeypatch.delenv("LOCALSERVE_TRITON_PDL", raising=False)
    assert pdl_launch(cuda) == OFF  # only where a span asks for it
    with pdl_where_supported():
        assert pdl_launch(cuda) == (ON if capable else OFF)
    assert pdl_launch(cuda) == OFF
    monkeypatch.setenv("LOCALSERVE_TRITON_PDL", "1")
    assert pdl_launch(cuda) == (ON if capable else OFF)
    monkeypatch.setenv("LOCALSERVE_TRITON_PDL", "0")
    assert pdl_launch(cuda) == OFF
    with pdl_where_supported():
        assert pdl_launch(cuda) == OFF


def test_spans_that_ask_for_pdl_never_get_it_off_a_gpu():
    with pdl_where_supported():
        assert pdl_launch(torch.device("cpu")) == OFF


def _chain(x: torch.Tensor, weight: torch.Tensor, gate_up: torch.Tensor,
           norm_w: torch.Tensor, layers: int) -> torch.Tensor:
    """A decode-like chain where every kernel reads what the one before it just wrote."""
    residual = x
    for _ in range(layers):
        h, residual = rms_norm(x, norm_w, 1e-6, residual)
        x = act_and_mul(gemv(h, gate_up), "silu")
        x = gemv(x, weight)
    return x


@pytest.mark.skipif(not torch.cuda.is_available()
                    or torch.cuda.get_device_capability()[0] < 9,
                    reason="PDL needs an NVIDIA sm_90+ GPU (run on the device machine)")
def test_chained_pdl_kernels_in_a_cuda_graph_match_plain_launches():
    torch.manual_seed(0)
    dev = torch.device("cuda")
    hidden, inter = 2048, 4096
    x = torch.randn(4, hidden, device=dev, dtype=torch.bfloat16)
    weight = torch.randn(hidden, inter, device=dev, dtype=torch.bfloat16) / inter ** 0.5
    gate_up = torch.randn(2 * inter, hidden, device=dev, dtype=torch.bfloat16) / hidden ** 0.5
    norm_w = torch.rand(hidden, device=dev, dtype=torch.bfloat16) + 0.5
    with pdl_override(False):
        expected = _chain(x, weight, gate_up, norm_w, 32)
    with pdl_override(True):
        assert pdl_launch(dev) == ON
        eager = _chain(x, weight, gate_up, norm_w, 32)
        static_x = x.clone()
        _chain(static_x, weight, gate_up, norm_w, 32)  # compile before capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = _chain(static_x, weight, gate_up, norm_w, 32)
    for _ in range(3):
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        # The same PDL kernels on the same inputs: anything but bit-identical output means a
        # kernel read its input before the previous one had written it.
        assert torch.equal(out, eager)
    # Against the plain builds (the gemv peels its first K tile under PDL): one layer equal up to
    # bf16 rounding; 32 layers within a loose bound (rounding compounds; a race reads garbage).
    with pdl_override(True):
        one = _chain(x, weight, gate_up, norm_w, 1)
    with pdl_override(False):
        one_plain = _chain(x, weight, gate_up, norm_w, 1)
    assert rel_error(one, one_plain) <= ELEMENTWISE_TOL[torch.bfloat16]
    assert rel_error(eager, expected) <= 0.1
