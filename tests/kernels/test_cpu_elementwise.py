"""C CPU RMSNorm, gated activations and the runtime controls (ISA, threads)."""

from __future__ import annotations

import pytest
import torch

from localserve.kernels import cpu, reference

pytestmark = pytest.mark.cpu


@pytest.fixture(autouse=True)
def need_library():
    if not cpu.available():
        pytest.skip("C CPU kernels unavailable (no compiler)")


@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize(("tokens", "hidden", "offset"), [(1, 640, 1.0), (5, 257, 0.0)])
def test_rms_norm(with_residual, tokens, hidden, offset):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, hidden, generator=g) * 3
    w = torch.randn(hidden, generator=g)
    res = torch.randn(tokens, hidden, generator=g) if with_residual else None
    got, got_res = cpu.rms_norm(x, w, 1e-6, residual=res, weight_offset=offset)
    want, want_res = reference.rms_norm(x, w, 1e-6, residual=res, weight_offset=offset)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if with_residual:
        assert torch.equal(got_res, want_res)
    else:
        assert got_res is None


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("shape", [(1, 2 * 2048), (3, 7, 2 * 33)])
def test_act_and_mul(isa, activation, shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 4
    x[..., 0, :3] = torch.tensor([-95.0, 90.0, 0.0])  # exp over/underflow edges of the gate
    got = cpu.act_and_mul(x, activation)
    torch.testing.assert_close(got, reference.act_and_mul(x, activation), rtol=1e-5, atol=1e-5)
    out = torch.empty(*shape[:-1], shape[-1] // 2)
    assert cpu.act_and_mul(x, activation, out=out) is out and torch.equal(out, got)
    with pytest.raises(ValueError, match="activation"):
        cpu.act_and_mul(x, "relu")


def test_isa_and_threads_controls(monkeypatch):
    best = cpu.best_isa()
    assert cpu.isa() in ("scalar", "avx2", "avx512", "neon")
    assert cpu.set_isa("scalar") == "scalar" and cpu.isa() == "scalar"
    monkeypatch.setenv("LOCALSERVE_CPU_ISA", "scalar")
    assert cpu.set_isa(None) == "scalar"  # the env var is honoured on re-dispatch
    monkeypatch.delenv("LOCALSERVE_CPU_ISA")
    assert cpu.set_isa(None) == best
    with pytest.raises(ValueError, match="unknown"):
        cpu.set_isa("sse9")
    if best != "neon":
        with pytest.raises(ValueError, match="does not support"):
            cpu.set_isa("neon")
    n = cpu.get_num_threads()
    cpu.set_num_threads(3)
    assert cpu.get_num_threads() == 3
    cpu.set_num_threads(n)
    with pytest.raises(ValueError):
        cpu.set_num_threads(0)


@pytest.mark.parametrize(("tokens", "heads", "head_dim", "rot"),
                         [(1, 4, 256, 256), (7, 2, 64, 64), (5, 3, 128, 64)])
def test_rotary_embedding(tokens, heads, head_dim, rot):
    g = torch.Generator().manual_seed(2)
    q = torch.randn(tokens, heads, head_dim, generator=g)
    k = torch.randn(tokens, 1, head_dim, generator=g)
    positions = torch.randint(0, 300, (tokens,), generator=g)
    cos_sin = reference.rope_cos_sin(rot, 512, 10000.0)
    got_q, got_k = cpu.rotary_embedding(positions, q, k, cos_sin)
    want_q, want_k = reference.rotary_embedding(positions, q, k, cos_sin)
    torch.testing.assert_close(got_q, want_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_k, want_k, rtol=1e-5, atol=1e-5)
    assert got_q.data_ptr() != q.data_ptr()  # new tensors, inputs untouched
    with pytest.raises(ValueError, match="out of range"):
        cpu.rotary_embedding(torch.tensor([512] * tokens), q, k, cos_sin)
