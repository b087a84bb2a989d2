"""paged_attention (Triton) against kernels/reference.py: prefill, chunked prefill, decode, mixed.

Without a GPU the kernels run in Triton's interpreter on CPU tensors at small shapes (fp32 and
fp16); with one, the same tests run at model-sized shapes in fp16/bf16. Inputs are fresh each
run (the seed is printed on failure); unused cache blocks and every output buffer start as NaN.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from localserve.kernels import reference
from localserve.kernels.triton import paged_attention
from localserve.kernels.triton._common import arch_override, poisoned_outputs
from localserve.kernels.triton.attention import choose_launch
from localserve.kernels.triton.testing import (
    ATTENTION_TOL,
    device,
    full_shapes,
    make_paged_batch,
    poison_outside_window,
    rel_error,
)

FULL = full_shapes()
DEV = device()
DTYPES = [torch.float16, torch.bfloat16] if FULL else [torch.float32, torch.float16]

# (q_lens, seq_lens) per case; a q_len of 0 is a sequence with nothing new this step.
if FULL:
    CASES = {
        "prefill": ([512, 300, 77], [512, 300, 77]),
        "chunked": ([256, 128], [1500, 700]),
        "decode": ([1] * 48, [int(x) for x in torch.randint(1, 4096, (48,))]),
        "mixed": ([1, 1, 200, 0, 1, 64], [900, 3000, 1200, 50, 1, 64]),
    }
else:
    CASES = {
        "prefill": ([20, 7], [20, 7]),
        "chunked": ([9, 5], [40, 13]),
        "decode": ([1, 1, 1], [37, 1, 90]),
        "mixed": ([1, 12, 0, 3], [70, 30, 5, 3]),
    }
# (num_heads, num_kv_heads): MHA, GQA, MQA, and a group of 3 (padded to 4 rows per token).
HEADS = [(4, 4), (8, 2), (4, 1), (6, 2)] if not FULL else [(32, 8), (16, 8), (16, 1), (12, 4)]
HEAD_DIMS = [64, 80, 128, 256] if FULL else [64, 80]


def _check(batch, scale, window=None, soft_cap=None, *, caches=None, num_kv_splits=None,
           pass_bounds=True):
    ref = reference.paged_attention(*batch.args(), scale, window, soft_cap)
    args = list(batch.args())
    if caches is not None:
        args[1], args[2] = caches
    bounds = ({"max_query_len": batch.max_query_len, "max_seq_len": batch.max_seq_len}
              if pass_bounds else {})
    with poisoned_outputs():
        out = paged_attention(*args, scale, window, soft_cap, num_kv_splits=num_kv_splits,
                              **bounds)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    err = rel_error(out, ref)
    assert err <= ATTENTION_TOL[batch.q.dtype], f"relative error {err:.3g}"
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("heads", HEADS, ids=lambda h: f"h{h[0]}kv{h[1]}")
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(case, heads, dtype, seed):
    q_lens, seq_lens = CASES[case]
    head_dim = 128 if FULL else 64
    batch = make_paged_batch(q_lens, seq_lens, *heads, head_dim, 16, dtype, DEV)
    _check(batch, head_dim ** -0.5)


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("block_size", [16, 32] if FULL else [8, 16])
def test_head_dims_and_block_sizes(head_dim, block_size, seed):
    dtype = DTYPES[0]
    q_lens, seq_lens = CASES["mixed"]
    batch = make_paged_batch(q_lens, seq_lens, 8, 2, head_dim, block_size, dtype, DEV)
    _check(batch, head_dim ** -0.5)


@pytest.mark.parametrize("case", ["chunked", "decode", "mixed"])
@pytest.mark.parametrize("window", [1, 8, 100] if not FULL else [1, 128, 1024])
def test_sliding_window_never_reads_blocks_outside_it(case, window, seed):
    q_lens, seq_lens = CASES[case]
    batch = make_paged_batch(q_lens, seq_lens, 8, 2, 64, 8 if not FULL else 16, DTYPES[0], DEV)
    k_cache, v_cache, num_poisoned = poison_outside_window(batch, q_lens, seq_lens, window)
    if window == 1:
        assert num_poisoned > 0  # the test must really hide blocks from the kernel
    _check(batch, 0.125, window, caches=(k_cache, v_cache))


@pytest.mark.parametrize("soft_cap", [5.0, 50.0])
def test_soft_cap(soft_cap, seed):
    q_lens, seq_lens = CASES["mixed"]
    batch = make_paged_batch(q_lens, seq_lens, 8, 2, 64, 16, DTYPES[0], DEV)
    batch.q.mul_(4)  # large scores, so the cap really bends them
    _check(batch, 0.125, soft_cap=soft_cap)
    _check(batch, 0.125, window=20, soft_cap=soft_cap)


# Each split is one more program per query block: the interpreter gets the few that matter
# (7 splits over a 1-tile sequence leaves empty splits).
SPLITS = ([("decode", n) for n in (1, 2, 3, 7, 64)] + [("mixed", n) for n in (2, 7, 64)]
          if FULL else [("decode", 2), ("decode", 7), ("mixed", 3)])


@pytest.mark.parametrize(("case", "num_kv_splits"), SPLITS)
def test_split_kv(case, num_kv_splits, seed):
    """Forced splits, including more splits than key tiles (empty splits must weigh 0)."""
    q_lens, seq_lens = CASES[case]
    batch = make_paged_batch(q_lens, seq_lens, 8, 2, 64, 16, DTYPES[0], DEV)
    _check(batch, 0.125, num_kv_splits=num_kv_splits)
    _check(batch, 0.125, window=33, num_kv_splits=num_kv_splits)


@pytest.mark.parametrize(("case", "num_kv_splits"),
                         [("decode", None), ("decode", 3), ("mixed", None), ("chunked", None)])
def test_heads_major_pages(case, num_kv_splits, seed):
    """Pages stored head by head behind the usual view (the CUDA runner's layout)."""
    q_lens, seq_lens = CASES[case]
    batch = make_paged_batch(q_lens, seq_lens, 8, 2, 64, 16, DTYPES[0], DEV, heads_major=True)
    assert not batch.k_cache.is_contiguous()
    _check(batch, 0.125, num_kv_splits=num_kv_splits)
    _check(batch, 0.125, window=33, num_kv_splits=num_kv_splits)


def test_bounds_computed_when_not_given(seed):
    q_lens, seq_lens = CASES["mixed"]
    batch = make_paged_batch(q_lens, seq_lens, 4, 2, 64, 16, DTYPES[0], DEV)
    _check(batch, 0.125, pass_bounds=False)


@pytest.mark.parametrize("case", ["mixed", "decode"])
@pytest.mark.parametrize(("query_len_slack", "max_seq_len"), [(0, 1), (10**6, 10**6)])
def test_loose_bounds_change_speed_not_results(case, query_len_slack, max_seq_len, seed):
    """max_seq_len may be anything (a graph captured for 4096 keys serves shorter sequences);
    max_query_len may be too large (a decode step then takes the general path)."""
    q_lens, seq_lens = CASES[case]
    batch = make_paged_batch(q_lens, seq_lens, 8, 2, 64, 16, DTYPES[0], DEV)
    batch.max_query_len += query_len_slack
    batch.max_seq_len = max_seq_len
    _check(batch, 0.125)


@pytest.mark.parametrize("num_kv_splits", [None, 3])
def test_decode_step_with_idle_sequences(num_kv_splits, seed):
    """The decode path (one program per sequence, no search) with sequences that have no
    new token this step: their programs must write nothing, the others the right rows."""
    q_lens, seq_lens = [1, 0, 1, 0, 1], [37, 5, 1, 80, 90]
    if FULL:
        q_lens, seq_lens = [1, 0] * 24, [int(x) for x in torch.randint(1, 4096, (48,))]
    batch = make_paged_batch(q_lens, seq_lens, 8, 2, 64, 16, DTYPES[0], DEV)
    assert batch.max_query_len == 1  # the kernel's decode path
    _check(batch, 0.125, num_kv_splits=num_kv_splits)


def test_strided_query_view(seed):
    """q as a view into a fused qkv projection output (token stride wider than the heads)."""
    q_lens, seq_lens = CASES["chunked"]
    batch = make_paged_batch(q_lens, seq_lens, 8, 2, 64, 16, DTYPES[0], DEV)
    qkv = torch.randn(batch.q.shape[0], 12, 64, dtype=batch.q.dtype, device=DEV)
    qkv[:, :8] = batch.q
    batch.q = qkv[:, :8]
    _check(batch, 0.125)


def test_empty_batch():
    batch = make_paged_batch([0], [5], 4, 2, 64, 16, DTYPES[0], DEV)
    out = paged_attention(*batch.args(), 0.125)
    assert out.shape == (0, 4, 64)


def test_split_heuristic():
    common = dict(num_kv_heads=8, group=4, head_dim=128, num_sms=132)
    long_single = choose_launch(num_seqs=1, max_query_len=1, max_seq_len=8192, **common)
    assert long_single.num_splits > 8  # 8 programs cannot fill 132 SMs: split the keys
    short = choose_launch(num_seqs=1, max_query_len=1, max_seq_len=100, **common)
    assert short.num_splits == 1       # too few keys to be worth a split
    big_batch = choose_launch(num_seqs=256, max_query_len=1, max_seq_len=8192, **common)
    assert big_batch.num_splits == 1
    prefill = choose_launch(num_seqs=1, max_query_len=4096, max_seq_len=4096, **common)
    assert prefill.num_splits == 1 and prefill.block_m == 64
    assert prefill.block_q * 4 == prefill.block_m
    mqa = choose_launch(num_seqs=4, max_query_len=1, max_seq_len=64, num_kv_heads=1,
                        group=32, head_dim=128, num_sms=132)
    assert mqa.block_q == 1 and mqa.block_m == 32


def test_unsplit_decode_tiles_per_gpu_generation():
    """Decode of many sequences (no split): 128-key tiles where Hopper's shared memory holds
    their staged K/V (and in the interpreter, so CI runs them); 64 keys on GPUs with ~99 KB
    or 64 KB; 32 on RDNA, which spills at 64 (test_triton_compile.py)."""
    shape = dict(num_seqs=256, num_kv_heads=8, group=2, num_sms=132, head_dim=128,
                 max_query_len=1, max_seq_len=4096)
    keys = {arch: choose_launch(arch=arch, **shape).block_n
            for arch in (None, "sm_90", "sm_120", "sm_89", "gfx942", "gfx1100")}
    assert keys == {None: 128, "sm_90": 128, "sm_120": 64, "sm_89": 64, "gfx942": 64,
                    "gfx1100": 32}
    assert choose_launch(**shape).num_splits == 1 and choose_launch(**shape).decode
    split = choose_launch(**{**shape, "num_seqs": 2})
    assert split.num_splits > 1 and split.block_n == 64
    assert not choose_launch(**{**shape, "max_query_len": 2}).decode


def test_prefill_tiles():
    """Prefill on the H100-tuned GPUs: 64-row tiles of 4 warps and 2 stages, 32 keys a tile
    below LONG_PREFILL_QUERY_LEN query tokens and 64 from there; Ampere/Ada keep 128 rows."""
    from localserve.kernels.triton.attention import LONG_PREFILL_QUERY_LEN

    common = dict(num_seqs=80, num_kv_heads=8, group=4, num_sms=132, head_dim=128,
                  max_seq_len=4096)
    for arch in (None, "sm_90", "gfx942"):
        short = choose_launch(arch=arch, max_query_len=300, **common)
        long = choose_launch(arch=arch, max_query_len=LONG_PREFILL_QUERY_LEN, **common)
        assert (short.block_m, short.block_q, short.block_n) == (64, 16, 32)
        assert (long.block_m, long.block_n) == (64, 64)
        assert (short.num_warps, short.num_stages) == (long.num_warps, long.num_stages) == (4, 2)
    assert choose_launch(arch="sm_89", max_query_len=300, **common).block_m == 128
    short_group = choose_launch(max_query_len=20, **{**common, "group": 2})  # Qwen3's GQA
    assert (short_group.block_m, short_group.block_q) == (64, 32)
    wide_heads = choose_launch(max_query_len=300, **{**common, "head_dim": 256})
    assert wide_heads.block_m == 64 and wide_heads.num_warps == 8  # unchanged for 256


def test_tiles_per_gpu_generation():
    """Hopper, AMD CDNA and the interpreter (None) share the H100-tuned tiles; Turing and RDNA
    get tiles their registers hold (at most 32 rows, 16 keys a tile but for RDNA's 16-row
    decode tiles); Ampere/Ada take 8
    warps from 64 rows of head_dim 128 (test_triton_compile.py checks the builds for spills)."""
    common = dict(num_seqs=4, num_kv_heads=8, group=4, num_sms=132)
    for head_dim, query_len in ((128, 1), (128, 4096), (256, 300), (80, 64)):
        shape = dict(head_dim=head_dim, max_query_len=query_len, max_seq_len=4096, **common)
        assert choose_launch(arch="sm_90", **shape) == choose_launch(arch=None, **shape)
        for small in ("sm_75", "gfx1100"):
            spec = choose_launch(arch=small, **shape)
            pad = 256 if head_dim > 128 else 128
            assert spec.block_m <= 32
            assert spec.block_n == (64 if small == "gfx1100" and (spec.block_m, pad) == (16, 128)
                                    else 16)
            assert spec.num_warps == (8 if spec.block_m * pad >= 16 * 256 else 4)
    shape = dict(head_dim=128, max_query_len=16, max_seq_len=64, **common)
    ada, hopper = choose_launch(arch="sm_89", **shape), choose_launch(arch="sm_90", **shape)
    assert ada.block_m == hopper.block_m == 64 and (ada.num_warps, hopper.num_warps) == (8, 4)
    mqa = choose_launch(arch="sm_75", num_seqs=4, max_query_len=1, max_seq_len=64,
                        num_kv_heads=1, group=32, head_dim=128, num_sms=40)
    assert mqa.block_q == 1 and mqa.block_m == 32


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("arch", ["sm_75", "sm_89", "gfx942", "gfx1100"])
def test_tiles_of_other_gpu_generations_match_reference(case, arch, seed):
    """The tiles chosen for other generations compute the same attention (run here, or on
    whatever GPU the tests have, with that generation's launch choices)."""
    q_lens, seq_lens = CASES[case]
    head_dim = 128 if FULL else 64
    batch = make_paged_batch(q_lens, seq_lens, 8, 2, head_dim, 16, DTYPES[0], DEV)
    with arch_override(arch):
        _check(batch, head_dim ** -0.5)
        _check(batch, head_dim ** -0.5, window=7, soft_cap=20.0)


def test_input_errors():
    batch = make_paged_batch([2, 1], [5, 9], 4, 2, 64, 16, DTYPES[0], DEV)
    q, kc, vc, bt, qsl, sl = batch.args()
    with pytest.raises(TypeError, match="k_cache must have dtype"):
        paged_attention(q, kc.to(torch.float64), vc, bt, qsl, sl, 0.1)
    with pytest.raises(TypeError, match="block_tables must have dtype"):
        paged_attention(q, kc, vc, bt.float(), qsl, sl, 0.1)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        paged_attention(q[:, :3], kc, vc, bt, qsl, sl, 0.1)
    with pytest.raises(ValueError, match="head_dim"):
        paged_attention(q[..., :32], kc, vc, bt, qsl, sl, 0.1)
    with pytest.raises(ValueError, match="num_seqs \\+ 1"):
        paged_attention(q, kc, vc, bt, qsl[:2], sl, 0.1)
    with pytest.raises(ValueError, match="sliding_window"):
        paged_attention(q, kc, vc, bt, qsl, sl, 0.1, sliding_window=0)
    with pytest.raises(ValueError, match="soft_cap"):
        paged_attention(q, kc, vc, bt, qsl, sl, 0.1, soft_cap=-1.0)
    with pytest.raises(ValueError, match="q must have 3 dimensions"):
        paged_attention(q[0], kc, vc, bt, qsl, sl, 0.1)
    if DEV.type == "cuda":
        with pytest.raises(ValueError, match="one device"):
            paged_attention(q.cpu(), kc, vc, bt, qsl, sl, 0.1)
