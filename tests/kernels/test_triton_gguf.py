"""Triton GGUF kernels (kernels/triton/gguf.py, gguf_gemv.py, gguf_q8.py) against the `gguf`
package's dequantization (`localserve.quant.gguf.dequantize`).

Every type the kernels read, random blocks (tests/helpers/gguf_blocks.py). `gguf_dequant` must
reproduce the reference's fp32 values (to 1e-6 relative: ggml's order of fp32 operations,
an FMA at most apart); `gguf_matmul` / `gguf_linear` must match x @ W^T with W rounded to x's
dtype first, as the kernel does (ELEMENTWISE_TOL of the output dtype: both sides accumulate in
fp32); `gguf_gemv` (one row) must match x @ W^T with W in fp32, as it computes;
`gguf_q8_matmul` (2-32 rows) must match `reference.gguf_q8_matmul` (x rounded to int8, then
x' @ W^T in fp32, as it computes) and stay within Q8_TOL of x @ W^T. Interpreter (CPU) at
small shapes; on a GPU, Llama-3-8B projection shapes. Outputs start NaN.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

pytest.importorskip("triton")

from localserve.kernels import reference
from localserve.kernels.triton import gguf as tg
from localserve.kernels.triton._common import poisoned_outputs
from localserve.kernels.triton.gguf_gemv import gguf_gemv
from localserve.kernels.triton.gguf_q8 import MAX_ROWS, gguf_q8_matmul, split_for, tile_for
from localserve.kernels.triton.quantize import quantize_q8
from localserve.kernels.triton.testing import ELEMENTWISE_TOL, device, full_shapes, rel_error
from localserve.quant.gguf import dequantize
from tests.helpers.gguf_blocks import random_weight

FULL = full_shapes()
DEV = device()
TYPES = [Q.Q4_0, Q.Q5_0, Q.Q8_0, Q.Q4_K, Q.Q5_K, Q.Q6_K]
# The interpreter casts fp32 to bf16 by truncation (the GPU rounds to nearest): bf16 on a GPU.
DTYPES = [torch.bfloat16, torch.float16] if FULL else [torch.float32, torch.float16]
# (N, K): K a multiple of 256, and (block types only) one that leaves a partial K-step.
SHAPES = [(4096, 4096), (1000, 14336)] if FULL else [(40, 512)]
PARTIAL_K = (48, 640) if not FULL else (6144, 4128)


def raw_weight(qtype: Q, n: int, k: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(random_weight(qtype, n, k, rng)).to(DEV)


def shapes_for(qtype: Q) -> list[tuple[int, int]]:
    return SHAPES + ([PARTIAL_K] if qtype in (Q.Q4_0, Q.Q5_0, Q.Q8_0) else [])


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_dequant_reproduces_the_reference(qtype, seed):
    for n, k in shapes_for(qtype):
        raw = raw_weight(qtype, n, k, seed)
        ref = dequantize(raw, qtype)
        with poisoned_outputs():
            out = tg.gguf_dequant(raw, qtype, k, torch.float32)
        assert out.shape == (n, k)
        assert rel_error(out.cpu(), ref) <= 1e-6


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_dequant_of_looked_up_rows(qtype, seed):
    """The embedding path: rows by id, repeated and in any order; ids out of range give
    zeros, not a read outside the table."""
    n, k = SHAPES[0]
    raw = raw_weight(qtype, n, k, seed)
    ids = torch.tensor([3, 0, n - 1, 3, 7], device=DEV)
    ref = dequantize(raw[ids.long()], qtype)
    with poisoned_outputs():
        out = tg.gguf_dequant(raw, qtype, k, DTYPES[-1], ids)
    assert torch.equal(out.cpu(), ref.to(DTYPES[-1]))
    bad = tg.gguf_dequant(raw, qtype, k, torch.float32, torch.tensor([-1, n], device=DEV))
    assert torch.equal(bad.cpu(), torch.zeros(2, k))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_linear_matches_reference(qtype, seed):
    """1, 5 and 16 rows: the fused kernel with one row block; 33: gguf_linear's dequantize +
    cuBLAS path (more than MAX_FUSED_ROWS rows), checked through the same function. (One
    test per type: the reference dequantizes in numpy, slowly at full shapes.)"""
    for n, k in shapes_for(qtype):
        raw = raw_weight(qtype, n, k, seed)
        w32 = dequantize(raw, qtype).to(DEV)
        for dtype in DTYPES:
            w = w32.to(dtype)
            for m in (1, 5, 16, 33):
                x = torch.randn(m, k, device=DEV).to(dtype)
                bias = torch.randn(n, device=DEV).to(dtype)
                ref = reference.linear(x, w, bias)
                with poisoned_outputs():
                    out = tg.gguf_linear(x, raw, qtype, bias)
                assert out.shape == (m, n) and out.dtype == dtype
                err = rel_error(out, ref)
                assert err <= ELEMENTWISE_TOL[dtype], f"{n}x{k} {dtype} {m}: error {err:.3g}"


@pytest.mark.parametrize("block_n", [16, 32, 64])
def test_fused_kernel_at_every_row_block(block_n, seed):
    """Row blocks of 32 (17..32 rows) and every column tile width the wrapper may choose,
    with N not a multiple of it and x a strided view."""
    qtype, dtype = Q.Q4_K, DTYPES[0]
    n, k = 72, 512
    raw = raw_weight(qtype, n, k, seed)
    wide = torch.randn(20, 2 * k, device=DEV).to(dtype)
    x = wide[:, k:]
    w = dequantize(raw, qtype).to(DEV).to(dtype)
    with poisoned_outputs():
        out = tg.gguf_matmul(x, raw, qtype, block_n=block_n)
    assert rel_error(out, reference.linear(x, w)) <= ELEMENTWISE_TOL[dtype]


def test_rejects_bad_input():
    raw = raw_weight(Q.Q8_0, 8, 64, 0)
    x = torch.randn(2, 64, device=DEV)
    with pytest.raises(ValueError, match="multiple of 32"):
        tg.gguf_matmul(torch.randn(2, 40, device=DEV), raw, Q.Q8_0)
    with pytest.raises(ValueError, match=r"uint8 \[rows, 68\]"):
        tg.gguf_matmul(x, raw[:, :34], Q.Q8_0)
    with pytest.raises(ValueError, match="read Q4_0"):
        tg.gguf_matmul(x, raw, Q.Q4_1)
    with pytest.raises(TypeError, match="raw must have dtype"):
        tg.gguf_matmul(x, raw.to(torch.int32), Q.Q8_0)
    with pytest.raises(TypeError, match="ids must have dtype"):
        tg.gguf_dequant(raw, Q.Q8_0, 64, torch.float32, torch.zeros(2, device=DEV))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_gemv_matches_reference(qtype, seed):
    """One row of x, every type, K that fills the last step and K that does not (masked
    loads), N not a multiple of the row block."""
    for n, k in [*shapes_for(qtype), (20, 768)]:
        raw = raw_weight(qtype, n, k, seed)
        w32 = dequantize(raw, qtype).to(DEV)
        for dtype in DTYPES:
            x = torch.randn(1, k, device=DEV).to(dtype)
            ref = reference.linear(x.float(), w32).to(dtype)
            for units, splits in ((None, None), (1, 1), (2, 1), (1, 3), (2, 8)):
                with poisoned_outputs():
                    out = gguf_gemv(x, raw, qtype, units=units, splits=splits)
                assert out.shape == (1, n) and out.dtype == dtype
                err = rel_error(out, ref)
                assert err <= ELEMENTWISE_TOL[dtype], (
                    f"{n}x{k} {dtype} units {units} splits {splits}: error {err:.3g}")


@pytest.mark.parametrize("block_n,num_warps", [(8, 4), (16, 2), (64, 8)])
def test_gemv_at_every_row_block(block_n, num_warps, seed):
    qtype, dtype = Q.Q6_K, DTYPES[0]
    n, k = 72, 512
    raw = raw_weight(qtype, n, k, seed)
    x = torch.randn(2, 2 * k, device=DEV).to(dtype)[:1, k:]  # a view into a wider row
    ref = reference.linear(x.float(), dequantize(raw, qtype).to(DEV))
    with poisoned_outputs():
        out = gguf_gemv(x, raw, qtype, block_n=block_n, num_warps=num_warps)
    assert rel_error(out, ref.to(dtype)) <= ELEMENTWISE_TOL[dtype]


def test_split_k_sums_in_share_order_and_leaves_its_counts_at_zero(seed):
    """K in shares (more shares than steps leaves some empty): the same bits on every launch
    with those shares, and the arrival counts back at zero for the next launch."""
    from localserve.kernels.triton.gguf_gemv import _SCRATCH

    qtype, n, k = Q.Q4_K, 40, 1024
    raw = raw_weight(qtype, n, k, seed)
    x = torch.randn(1, k, device=DEV)
    ref = reference.linear(x, dequantize(raw, qtype).to(DEV))
    first = gguf_gemv(x, raw, qtype, units=1, splits=3)
    assert rel_error(first, ref) <= ELEMENTWISE_TOL[torch.float32]
    for _ in range(2):
        assert torch.equal(gguf_gemv(x, raw, qtype, units=1, splits=3), first)
    assert rel_error(gguf_gemv(x, raw, qtype, units=1, splits=8), ref) <= 1e-5
    _, arrived = _SCRATCH[x.device]
    assert not arrived.any()


def test_gemv_rejects_bad_input():
    raw = raw_weight(Q.Q6_K, 8, 256, 0)
    with pytest.raises(ValueError, match="one row of x"):
        gguf_gemv(torch.randn(2, 256, device=DEV), raw, Q.Q6_K)
    with pytest.raises(ValueError, match=r"uint8 \[rows, 210\]"):
        gguf_gemv(torch.randn(1, 256, device=DEV), raw[:, :200].contiguous(), Q.Q6_K)
    with pytest.raises(ValueError, match="read Q4_0"):
        gguf_gemv(torch.randn(1, 256, device=DEV), raw, Q.Q2_K)


# x's int8 rounding (half a step of 1/127 of a block's largest value) against x @ W^T, as the
# largest error over the output relative to its largest value; measured 0.3-1% on these shapes.
Q8_TOL = 3e-2


def test_quantize_q8_reproduces_the_reference(seed):
    torch.manual_seed(seed)
    x = torch.randn(5, 1024, device=DEV) * torch.rand(5, 1024, device=DEV)
    x[1, :32] = 0  # a block of zeros: scale 0, values 0
    q, d, s = quantize_q8(x)
    ref_q, ref_d, ref_s = reference.quantize_q8(x)
    assert torch.equal(q, ref_q)
    assert not d[1, 0] and not s[1, 0]
    assert rel_error(d, ref_d) <= 1e-6 and rel_error(s, ref_s) <= 1e-6
    assert (q.abs() <= 127).all() and (q.abs().amax(dim=1) == 127).all()


def test_quantize_q8_rounds_a_tie_to_even():
    """x * (127 / amax) is exactly -57.5 here with the quotient correctly rounded (the kernel's
    div_rn; torch's CPU `127.0 / tensor` was 1 ulp off and gave -57.499996: -57): -58."""
    x = torch.zeros(1, 32, device=DEV)
    x[0, 0], x[0, 1] = 2.327962636947632, -1.0539988279342651
    for q in (quantize_q8(x)[0], reference.quantize_q8(x)[0]):
        assert q[0, :2].tolist() == [127, -58]


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_q8_matmul_matches_reference(qtype, seed):
    """2 to MAX_ROWS rows of x, every type, K that fills the last step and K that does not,
    N not a multiple of the row block, K whole or in shares."""
    torch.manual_seed(seed)
    for n, k in [*shapes_for(qtype), (20, 768)]:
        raw = raw_weight(qtype, n, k, seed)
        w32 = dequantize(raw, qtype).to(DEV)
        for m, dtype in ((2, DTYPES[0]), (5, DTYPES[-1]), (MAX_ROWS, DTYPES[0])):
            x = torch.randn(m, k, device=DEV).to(dtype)
            ref = reference.gguf_q8_matmul(x, w32).to(dtype)
            exact = reference.linear(x.float(), w32)
            for splits in (None, 1, 3):
                with poisoned_outputs():
                    out = gguf_q8_matmul(x, raw, qtype, splits=splits)
                assert out.shape == (m, n) and out.dtype == dtype
                err = rel_error(out, ref)
                assert err <= ELEMENTWISE_TOL[dtype], (
                    f"{n}x{k} {m} rows {dtype} splits {splits}: error {err:.3g}")
                err = ((out.float() - exact).abs().max() / exact.abs().max()).item()
                assert err <= Q8_TOL, f"{n}x{k} {m} rows: {err:.3g} from x @ W^T"


def test_q8_split_k_sums_in_share_order_and_leaves_its_counts_at_zero(seed):
    from localserve.kernels.triton.gguf_gemv import _SCRATCH

    qtype, n, k = Q.Q6_K, 40, 1024
    raw = raw_weight(qtype, n, k, seed)
    x = torch.randn(3, k, device=DEV)
    first = gguf_q8_matmul(x, raw, qtype, splits=3)
    assert rel_error(first, reference.gguf_q8_matmul(x, dequantize(raw, qtype).to(DEV))) <= 1e-5
    for _ in range(2):
        assert torch.equal(gguf_q8_matmul(x, raw, qtype, splits=3), first)
    _, arrived = _SCRATCH[x.device]
    assert not arrived.any()


def test_q8_takes_x_already_quantized(seed):
    """x_q8 (x quantized by the norm or activation that produced it) gives the same bits as
    quantizing x here, and is what the kernel reads (another x's quantization gives that x's
    product); a quantization of another shape is refused."""
    qtype, n, k = Q.Q4_K, 24, 512
    raw = raw_weight(qtype, n, k, seed)
    x, other = torch.randn(4, k, device=DEV), torch.randn(4, k, device=DEV)
    x_q8 = quantize_q8(x)
    assert torch.equal(gguf_q8_matmul(x, raw, qtype, x_q8=x_q8), gguf_q8_matmul(x, raw, qtype))
    assert torch.equal(gguf_q8_matmul(x, raw, qtype, x_q8=quantize_q8(other)),
                       gguf_q8_matmul(other, raw, qtype))
    with pytest.raises(ValueError, match=r"x_q8 must be contiguous \(int8 \[4, 512\]"):
        gguf_q8_matmul(x, raw, qtype, x_q8=quantize_q8(x[:3]))
    with pytest.raises(ValueError, match="x_q8 must be"):
        gguf_q8_matmul(x, raw, qtype, x_q8=(x_q8[0], x_q8[1].double(), x_q8[2]))


def test_q8_shares_of_k_count_the_tile_launched():
    """A narrower tile than the default launches more programs, so K takes fewer shares: a
    sweep of other tiles must not run with the default tile's shares."""
    n = k = 4096
    block_m, block_n, parts, _, _ = tile_for(Q.Q4_K, 16, DEV)
    assert block_n > 16
    assert (split_for(16, n, k, block_m, 16, parts, DEV)
            < split_for(16, n, k, block_m, block_n, parts, DEV))


def test_q8_rejects_bad_input():
    raw = raw_weight(Q.Q4_K, 8, 256, 0)
    with pytest.raises(ValueError, match=f"at most {MAX_ROWS} rows"):
        gguf_q8_matmul(torch.randn(MAX_ROWS + 1, 256, device=DEV), raw, Q.Q4_K)
    with pytest.raises(ValueError, match=r"uint8 \[rows, 144\]"):
        gguf_q8_matmul(torch.randn(2, 256, device=DEV), raw[:, :100].contiguous(), Q.Q4_K)
    with pytest.raises(ValueError, match="multiple of 32 values"):
        quantize_q8(torch.randn(2, 48, device=DEV))
