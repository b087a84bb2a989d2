"""C CPU GGUF matmul and quantized embedding vs kernels/reference.py, on every ISA path here.

Two checks per case:
- exact: the reference applied to x after the same activation quantization the kernel does
  (Q8_0-style 32-blocks for Q5_0/Q8_0, Q8_K 256-blocks for the K-quants; d = amax/127,
  q = rint(x/d), emulated bit for bit in numpy): only fp32 accumulation differs, so the
  error must be below 2e-5 * ||x|| * ||w_row||. One wrong element (~||x||*||w||/K) fails it.
- bounded: vs the float64 reference on the unquantized x, the activation rounding error
  is at most ||w_row|| * ||e|| with |e_i| <= d/2, i.e. sqrt(block)/254 * ||x|| * ||w_row||
  (0.0223 for 32-blocks, 0.063 for 256-blocks).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from localserve.kernels import cpu, reference
from tests.helpers.gguf_blocks import random_weight

pytestmark = pytest.mark.cpu
ACT_BLOCK = {Q.Q8_0: 32, Q.Q5_0: 32, Q.Q4_K: 256, Q.Q6_K: 256}


def quantized_activations(x: np.ndarray, block: int) -> np.ndarray:
    """What the kernel actually multiplies by: x rounded like the C quantizer, in float64."""
    t, k = x.shape
    xb = x.reshape(t, k // block, block).astype(np.float32)
    d = (np.abs(xb).max(-1, keepdims=True) / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    q = np.rint((xb * inv).astype(np.float32))
    return (q.astype(np.float64) * d.astype(np.float64)).reshape(t, k)


def check_matmul(qtype: Q, tokens: int, k: int, out: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    raw = random_weight(qtype, out, k, rng)
    x = torch.from_numpy(rng.standard_normal((tokens, k)).astype(np.float32))
    x[0, :7] *= 40.0  # outliers stretch one block's scale, as real activations do
    y = cpu.gguf_matmul(x, raw, int(qtype), out)
    assert y.shape == (tokens, out) and y.dtype == torch.float32
    w = torch.from_numpy(np.asarray(reference.gguf_linear(torch.eye(k), raw, int(qtype))).T.copy())
    norm = x.double().norm(dim=1, keepdim=True) * w.norm(dim=1)[None, :]  # [T, out]
    if qtype in ACT_BLOCK:
        xq = torch.from_numpy(quantized_activations(x.numpy(), ACT_BLOCK[qtype]))
        exact = reference.gguf_linear(xq, raw, int(qtype))
        err = ((y.double() - exact).abs() / norm).max().item()
        assert err < 2e-5, f"{qtype.name}: kernel differs from quantized-x reference by {err:.2e}"
        bound = math.sqrt(ACT_BLOCK[qtype]) / 254 * 1.001 + 1e-5
    else:
        bound = 2e-6 * math.sqrt(k)
    ref = reference.gguf_linear(x, raw, int(qtype))
    err = ((y.double() - ref).abs() / norm).max().item()
    assert err < bound, f"{qtype.name}: error {err:.3e} above bound {bound:.3e}"


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q5_0], ids=lambda q: q.name)
@pytest.mark.parametrize(("tokens", "k", "out"), [(1, 96, 37), (7, 640, 130), (5, 2048, 9)])
def test_matmul_32_blocks(isa, qtype, tokens, k, out):
    check_matmul(qtype, tokens, k, out)


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q6_K], ids=lambda q: q.name)
@pytest.mark.parametrize(("tokens", "k", "out"), [(1, 256, 37), (6, 768, 130), (2, 2048, 11)])
def test_matmul_k_quants(isa, qtype, tokens, k, out):
    check_matmul(qtype, tokens, k, out)


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16], ids=lambda q: q.name)
@pytest.mark.parametrize(("tokens", "k", "out"), [(1, 100, 19), (5, 640, 70)])
def test_matmul_float(isa, qtype, tokens, k, out):
    check_matmul(qtype, tokens, k, out)


def test_matmul_threads_agree(isa):
    """Splitting rows across threads must not change any output bit."""
    rng = np.random.default_rng(3)
    raw = random_weight(Q.Q4_K, 300, 512, rng)
    x = torch.from_numpy(rng.standard_normal((9, 512)).astype(np.float32))
    n = cpu.get_num_threads()
    try:
        cpu.set_num_threads(1)
        one = cpu.gguf_matmul(x, raw, int(Q.Q4_K), 300)
        cpu.set_num_threads(max(2, n))
        many = cpu.gguf_matmul(x, raw, int(Q.Q4_K), 300)
    finally:
        cpu.set_num_threads(n)
    assert torch.equal(one, many)
    single = torch.cat([cpu.gguf_matmul(x[i:i + 1], raw, int(Q.Q4_K), 300) for i in range(9)])
    assert torch.equal(single, many), "token tiling must match the one-token path exactly"


def test_pool_jobs_of_varying_width():
    """Back-to-back jobs using 1..all pool threads (the pool's job word and wake-ups)."""
    rng = np.random.default_rng(8)
    sizes = [1, 64, 300, 7, 1000]  # nth grows with the work: 1 thread up to the whole pool
    weights = [cpu.prepare_weight(random_weight(Q.Q8_0, n, 640, rng), int(Q.Q8_0), n)
               for n in sizes]
    x = torch.from_numpy(rng.standard_normal((1, 640)).astype(np.float32))
    want = [cpu.gguf_matmul(x, w) for w in weights]
    n = cpu.get_num_threads()
    try:
        cpu.set_num_threads(4)
        for i in range(400):
            j = (i * 7) % len(sizes)
            assert torch.equal(cpu.gguf_matmul(x, weights[j]), want[j])
    finally:
        cpu.set_num_threads(n)


def test_matmul_multi_matches_single_calls(isa):
    """Weights of mixed types sharing x in one call give exactly the per-weight results."""
    rng = np.random.default_rng(7)
    types = [Q.Q5_0, Q.Q8_0, Q.Q4_K, Q.Q6_K, Q.F16]
    sizes = [40, 9, 130, 3, 17]
    weights = [cpu.prepare_weight(random_weight(t, n, 512, rng), int(t), n)
               for t, n in zip(types, sizes, strict=True)]
    for tokens in (1, 6):
        x = torch.from_numpy(rng.standard_normal((tokens, 512)).astype(np.float32))
        got = cpu.gguf_matmul_multi(x, weights)
        for y, w in zip(got, weights, strict=True):
            assert torch.equal(y, cpu.gguf_matmul(x, w))
    with pytest.raises(ValueError, match="in_features"):
        cpu.gguf_matmul_multi(torch.randn(1, 256), weights)


def test_matmul_prepared_weight_and_errors():
    rng = np.random.default_rng(4)
    raw = random_weight(Q.Q8_0, 64, 128, rng)
    w = cpu.prepare_weight(raw, int(Q.Q8_0), 64)
    assert (w.in_features, w.out_features) == (128, 64)
    x = torch.randn(2, 3, 128)
    y = cpu.gguf_matmul(x, w)
    assert y.shape == (2, 3, 64)
    torch.testing.assert_close(y.reshape(6, 64), cpu.gguf_matmul(x.reshape(6, 128), w))
    with pytest.raises(ValueError, match="in_features"):
        cpu.gguf_matmul(torch.randn(2, 96), w)
    with pytest.raises(TypeError, match="float32"):
        cpu.gguf_matmul(torch.randn(2, 128, dtype=torch.float64), w)
    with pytest.raises(ValueError, match="whole"):
        cpu.prepare_weight(raw[:, :-1].copy(), int(Q.Q8_0), 64)
    with pytest.raises(ValueError, match="unsupported"):
        cpu.prepare_weight(raw, 2, 64)  # Q4_0 is not supported


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q5_0, Q.Q4_K, Q.Q6_K, Q.F16, Q.BF16],
                         ids=lambda q: q.name)
def test_embedding_rows(qtype):
    rng = np.random.default_rng(5)
    raw = random_weight(qtype, 50, 512, rng)
    ids = torch.tensor([[3, 0, 49], [7, 7, 1]])
    got = cpu.embedding(ids, raw, int(qtype), 50, scale=2.0)
    from gguf.quants import dequantize

    table = torch.from_numpy(np.asarray(dequantize(raw, int(qtype)), np.float32))
    torch.testing.assert_close(got, table[ids] * 2.0, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        cpu.embedding(torch.tensor([50]), raw, int(qtype), 50)


def test_embedding_q8_k():
    """Q8_K (float d, int8 qs[256], int16 bsums[16]); gguf cannot decode it, numpy can."""
    rng = np.random.default_rng(6)
    rows, nb = 10, 2
    d = rng.uniform(0.01, 0.1, (rows, nb)).astype(np.float32)
    qs = rng.integers(-127, 128, (rows, nb, 256), dtype=np.int8)
    blk = np.zeros((rows, nb, 292), np.uint8)
    blk[..., :4] = d[..., None].view(np.uint8)
    blk[..., 4:260] = qs.view(np.uint8)
    raw = blk.reshape(rows, -1)
    want = torch.from_numpy((qs.astype(np.float32) * d[..., None]).reshape(rows, 512))
    got = cpu.embedding(torch.tensor([9, 2]), raw, int(Q.Q8_K), rows)
    torch.testing.assert_close(got, want[[9, 2]], rtol=0, atol=0)
