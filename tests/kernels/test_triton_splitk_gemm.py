"""splitk_gemm (Triton) against kernels/reference.py's fp32 linear: decode batches of 17-256 rows.

Interpreter (CPU) at small shapes without a GPU (fp32, fp16), Llama-3-8B projection shapes on
one (bf16, fp16). Outputs and the split-K workspace start NaN, so a partial that is read but
never written shows. Tolerance: relative to max |reference|, the output dtype's rounding
(ELEMENTWISE_TOL) - both sides accumulate in fp32. The interpreter runs the programs one after
another, so only a GPU exercises the counters' ordering under real concurrency; the results'
bits must not depend on it.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from localserve.kernels import reference
from localserve.kernels.triton import splitk_gemm as sk
from localserve.kernels.triton._common import (
    DEFAULT_NUM_SMS,
    arch_override,
    cdiv,
    next_pow2,
    poisoned_outputs,
)
from localserve.kernels.triton.splitk_gemm import SplitKConfig, default_config, splitk_gemm
from localserve.kernels.triton.testing import (
    ELEMENTWISE_TOL,
    device,
    full_shapes,
    rel_error,
)

FULL = full_shapes()
DEV = device()
DTYPES = [torch.bfloat16, torch.float16] if FULL else [torch.float32, torch.float16]
# (N, K): o_proj, qkv, down of Llama-3-8B; odd sizes that leave partial column and K blocks.
SHAPES = ([(4096, 4096), (6144, 4096), (4096, 14336), (1000, 4100)] if FULL
          else [(64, 256), (40, 300), (96, 512)])
ROWS = [17, 64, 128, 256] if FULL else [17, 33, 64, 130]  # 130: sums in 3 row chunks
# Splits 1-4 over both tile sizes. On (40, 300): 5 K tiles of 64 (the last partial) in 3 and
# 4 splits (both run as 3 of 2, 2, 1 tiles); on (24, 100): 4 splits of 1-2 tiles. 128 x 128
# tiles in 2 stages: 4 stages of [128 + 256, 128] would need 384 KB of shared memory.
CONFIGS = [SplitKConfig(block_n=64, block_k=64, split_k=1, num_warps=4),
           SplitKConfig(block_n=128, block_k=128, split_k=1, num_stages=2),
           SplitKConfig(block_n=64, block_k=64, split_k=2, num_warps=4),
           SplitKConfig(block_n=128, block_k=64, split_k=3),
           SplitKConfig(block_n=64, block_k=64, split_k=4, num_warps=4, num_stages=3),
           SplitKConfig(block_n=128, block_k=128, split_k=4, num_stages=2)]
SPLIT = SplitKConfig(block_n=64, block_k=64, split_k=4, num_warps=4)


def _run(x, w, bias=None, config=None):
    """splitk_gemm with NaN in its output and in every workspace it may read."""
    with poisoned_outputs():
        for workspace, _ in sk._BUFFERS.values():
            workspace.fill_(float("nan"))
        return splitk_gemm(x, w, bias, config)


def _inputs(m, n, k, dtype, scale=True):
    x = torch.randn(m, k, device=DEV).to(dtype)
    w = (torch.randn(n, k, device=DEV) / (k ** 0.5 if scale else 1)).to(dtype)
    return x, w


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("m", ROWS)
def test_matches_reference(m, n, k, dtype, seed):
    x, w = _inputs(m, n, k, dtype)
    b = torch.randn(n, device=DEV).to(dtype)
    for bias in (None, b):
        ref = reference.linear(x, w, bias)
        out = _run(x, w, bias)
        assert out.shape == (m, n) and out.dtype == dtype
        err = rel_error(out, ref)
        assert err <= ELEMENTWISE_TOL[dtype], f"relative error {err:.3g}"


@pytest.mark.parametrize("config", CONFIGS,
                         ids=lambda c: f"{c.block_n}x{c.block_k}-split{c.split_k}")
@pytest.mark.parametrize("n,k", [SHAPES[-2], SHAPES[-1], (24, 100)])
def test_every_config_is_exact_enough(config, n, k, seed):
    """The tiles and splits a tuner may pick all give the same answer (partial column tiles,
    K uneven over the tiles and the splits, fewer K tiles than splits), with and without bias."""
    dtype = DTYPES[0]
    for m in (17, ROWS[-1]):
        x, w = _inputs(m, n, k, dtype, scale=False)
        b = torch.randn(n, device=DEV).to(dtype)
        for bias in (None, b):
            out = _run(x, w, bias, config)
            assert rel_error(out, reference.linear(x, w, bias)) <= ELEMENTWISE_TOL[dtype]


def test_splits_never_run_empty():
    """Splits are whole K tiles: more splits than fit are dropped, not launched idle."""
    assert sk._num_splits(17, 24, 100, SplitKConfig(block_k=64, split_k=4)) == 2
    assert sk._num_splits(17, 24, 100, SplitKConfig(block_k=128, split_k=4)) == 1
    assert sk._num_splits(17, 40, 300, SplitKConfig(block_k=64, split_k=4)) == 3  # 2, 2, 1
    assert sk._num_splits(17, 40, 300, SplitKConfig(block_k=64, split_k=5)) == 5


def test_empty_splits_add_zeros(monkeypatch, seed):
    """Launched anyway (the wrapper's clamp bypassed), splits past the last K tile store zero
    partials and the last of them still sums the tile."""
    monkeypatch.setattr(sk, "_num_splits", lambda m, n, k, cfg: cfg.split_k)
    dtype = DTYPES[0]
    x, w = _inputs(33, 40, 100, dtype)  # 2 K tiles of 64 in 4 splits: 2 empty
    for cfg in (SplitKConfig(block_n=64, block_k=64, split_k=4, num_warps=4),
                SplitKConfig(block_n=64, block_k=128, split_k=3, num_warps=4)):
        out = _run(x, w, config=cfg)
        assert rel_error(out, reference.linear(x, w)) <= ELEMENTWISE_TOL[dtype]
    assert not sk._BUFFERS[DEV][1].any()


def test_consecutive_calls_are_bitwise_identical(seed):
    """The last program of each column tile resets its counter: a second launch (after one of
    another shape on the same counters) sums the same partials in the same order."""
    dtype = DTYPES[0]
    n, k = SHAPES[-1]
    x, w = _inputs(ROWS[-1], n, k, dtype)
    first = _run(x, w, config=SPLIT)
    _run(*_inputs(17, *SHAPES[0], dtype), config=SPLIT)
    for _ in range(3):
        assert torch.equal(_run(x, w, config=SPLIT), first)
    default = splitk_gemm(x, w)
    assert torch.equal(splitk_gemm(x, w), default)


def test_counters_are_zero_after_a_call(seed):
    dtype = DTYPES[0]
    for (n, k), config in zip(SHAPES[:3], (SPLIT, CONFIGS[3], CONFIGS[-1]), strict=True):
        _run(*_inputs(ROWS[0], n, k, dtype), config=config)
        counters = sk._BUFFERS[DEV][1]
        assert counters.numel() >= cdiv(n, config.block_n)
        assert not counters.any(), counters


def test_strided_rows_are_read_in_place(seed):
    """x as a column slice of a wider tensor (a fused projection's output) needs no copy."""
    dtype = DTYPES[0]
    n, k = SHAPES[0]
    x = torch.randn(ROWS[0], 2 * k, device=DEV).to(dtype)[:, k:]
    w = torch.randn(n, k, device=DEV).to(dtype)
    assert not x.is_contiguous()
    assert rel_error(_run(x, w, config=SPLIT), reference.linear(x, w)) <= ELEMENTWISE_TOL[dtype]


def test_empty_dimensions():
    w, b = torch.randn(8, 4, device=DEV), torch.randn(8, device=DEV)
    assert splitk_gemm(torch.randn(0, 4, device=DEV), w).shape == (0, 8)
    assert splitk_gemm(torch.randn(20, 4, device=DEV), w[:0]).shape == (20, 0)
    x0, w0 = torch.randn(20, 0, device=DEV), torch.randn(8, 0, device=DEV)
    assert torch.equal(splitk_gemm(x0, w0), torch.zeros(20, 8, device=DEV))
    assert torch.equal(splitk_gemm(x0, w0, b), b.expand(20, 8))


def test_rejects_bad_input():
    x = torch.randn(20, 8, device=DEV)
    with pytest.raises(ValueError, match="at most 256 rows"):
        splitk_gemm(torch.randn(257, 8, device=DEV), torch.randn(4, 8, device=DEV))
    with pytest.raises(ValueError, match="features"):
        splitk_gemm(x, torch.randn(4, 9, device=DEV))
    with pytest.raises(TypeError, match="dtype"):
        splitk_gemm(x, torch.randn(4, 8, device=DEV, dtype=torch.float16))
    with pytest.raises(ValueError, match="bias"):
        splitk_gemm(x, torch.randn(4, 8, device=DEV), torch.randn(5, device=DEV))
    with pytest.raises(ValueError, match="powers of two"):
        SplitKConfig(block_n=48)
    with pytest.raises(ValueError, match="split_k"):
        SplitKConfig(split_k=0)


def test_buffers_grow_outside_capture_and_keep_old_ones(monkeypatch):
    monkeypatch.setattr(sk, "_BUFFERS", {})
    monkeypatch.setattr(sk, "_RETIRED", [])
    cpu = torch.device("cpu")
    small = sk._buffers(cpu, 100, 8)
    assert sk._buffers(cpu, 50, 4) is small  # big enough: reused
    workspace, counters = sk._buffers(cpu, 200, 4)
    assert workspace.numel() == 200 and counters.numel() == 8 and not counters.any()
    assert [id(t) for t in sk._RETIRED] == [id(t) for t in small]  # graphs may replay them
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    with pytest.raises(RuntimeError, match="largest shape before capture"):
        sk._buffers(torch.device("cuda", 0), 100, 8)


def test_workspace_stays_bounded():
    """SPLIT_K shrinks until the partials fit MAX_WORKSPACE_BYTES (down to one split)."""
    cfg = SplitKConfig(block_k=64, split_k=8)
    assert sk._num_splits(256, 4096, 14336, cfg) == 4  # 4 MiB a split
    assert sk._num_splits(17, 128256, 4096, cfg) == 1  # the LM head: 8.7 MB a split
    assert 4 * 256 * 4096 * sk._num_splits(256, 4096, 14336, cfg) <= sk.MAX_WORKSPACE_BYTES


@pytest.mark.parametrize(("n", "k"), [(4096, 4096), (4096, 14336)])
@pytest.mark.parametrize("m", [17, 33, 64, 100, 128, 256])
def test_default_config_fills_an_h100(m, n, k):
    """On the 8B's o and down shapes (too few column tiles for cuBLAS) the default launches
    about 1-2 programs a SM, each split at least MIN_K_TILES_PER_SPLIT tiles long, and its
    stages fit shared memory."""
    x, w = torch.empty(m, k, dtype=torch.bfloat16), torch.empty(n, k, dtype=torch.bfloat16)
    with arch_override("sm_90"):
        cfg = default_config(x, w)
    split = sk._num_splits(m, n, k, cfg)
    programs = cdiv(n, cfg.block_n) * split
    assert 0.9 * DEFAULT_NUM_SMS <= programs <= 2 * DEFAULT_NUM_SMS, (cfg, split)
    assert cdiv(k, cfg.block_k) // split >= sk.MIN_K_TILES_PER_SPLIT
    block_m = max(sk.MIN_BLOCK_M, next_pow2(m))
    assert (cfg.block_n + block_m) * cfg.block_k * 2 * cfg.num_stages <= 232_448


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_replays_match_eager_launches(seed):
    """Counters left at zero make a captured split-K launch safe to replay."""
    dtype = DTYPES[0]
    n, k = SHAPES[0]
    x, w = _inputs(64, n, k, dtype)
    cfg = SplitKConfig(split_k=4)
    splitk_gemm(x, w, config=cfg)  # compiles and sizes the buffers before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = splitk_gemm(x, w, config=cfg)
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, splitk_gemm(x, w, config=cfg))
    assert not sk._BUFFERS[DEV][1].any()
