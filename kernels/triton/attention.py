"""Paged attention over the KV cache: prefill, chunked prefill and decode through one entry point.

The wrapper validates its inputs, picks tile sizes and (for small grids over long contexts)
a split-KV factor, and launches the kernels of `attention_kernels.py`. Layouts are those of
kernels/reference.py: packed queries [num_tokens, num_heads, head_dim], caches
[num_blocks, block_size, num_kv_heads, head_dim].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from localserve.kernels.triton._common import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    cdiv,
    check_last_dim_contiguous,
    check_same_device,
    check_tensor,
    empty,
    gpu_arch,
    next_pow2,
    num_sms,
    nvidia_capability,
    pdl_launch,
    rdna,
)
from localserve.kernels.triton.attention_kernels import (
    paged_attention_kernel,
    reduce_splits_kernel,
)

# A split must cover at least this many keys: below it the partial-result traffic and the
# reduction cost more than the parallelism buys.
MIN_KEYS_PER_SPLIT = 256
MAX_SPLITS = 64
# Query lengths up to this are "decode-like" (decode, speculative tokens): small query tiles and
# split-KV allowed. Longer ones are prefill chunks that fill the GPU on their own.
MAX_DECODE_QUERY_LEN = 16
# Prefill queries at least this long take 64-key tiles on the H100-tuned GPUs, shorter ones 32
# (their causal diagonal, where half of each tile is masked, is most of their work).
LONG_PREFILL_QUERY_LEN = 2048
LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class AttentionLaunchSpec:
    """Tile sizes and grid shape chosen for one call (derived from the batch, never from data)."""

    block_q: int        # query tokens per program
    block_m: int        # rows per program = block_q * next_pow2(group)
    block_n: int        # keys per tile
    num_splits: int     # programs per query block along the keys (1 = no split-KV)
    num_warps: int
    num_stages: int
    decode: bool = False  # at most one query token per sequence: one program per sequence


def choose_launch(*, num_seqs: int, num_kv_heads: int, group: int, head_dim: int,
                  max_query_len: int, max_seq_len: int, num_sms: int,
                  num_kv_splits: int | None = None, elem_bytes: int = 2,
                  arch: str | None = None) -> AttentionLaunchSpec:
    """Tile sizes for head_dim/GQA group; split-KV when too few programs would fill the GPU.

    elem_bytes: 2 for fp16/bf16, 4 for fp32 (exact FMA dots, no tensor cores: they hold a
    whole [rows, keys] product per thread, so smaller tiles, or the kernel spills on sm_90).
    arch: the GPU generation (`_common.gpu_arch`). Hopper, AMD CDNA and None (the interpreter)
    use the tiles tuned on the H100. Turing (sm_75: no asynchronous copies, 16x8x8 MMAs) and
    RDNA Radeons (gfx11xx: 256 VGPRs per wave32 lane) spilled with those, up to 32 KB a thread
    at 128 rows on sm_75, so they get at most 32 rows of 16-key tiles (RDNA keeps 32-64 keys
    for 16-row decode tiles): the largest their compilers build without spills
    (test_triton_compile.py; at head_dim 256 gfx1100 spills whatever the tiles, least here).
    """
    group_pad = next_pow2(group)
    head_dim_pad = next_pow2(head_dim)
    decode_like = max_query_len <= MAX_DECODE_QUERY_LEN
    decode = max_query_len == 1  # one query token per sequence at most
    nvidia = nvidia_capability(arch)
    small_tiles = (nvidia is not None and nvidia < (8, 0)) or rdna(arch)
    # Hopper, AMD CDNA and the interpreter take the tiles tuned on the H100. Their prefill
    # takes 64-row tiles of 4 warps and 2 stages, with 32-key tiles for short queries. H100,
    # `triton_kernels.py --only prefill_chunk` (Llama-3-8B heads), against 128 x 64 tiles of 8
    # warps: a 16,384-token chunk of 81 prompts of ~200 tokens 236 vs 364 us; 8 x 512 tokens
    # 101 vs 129; 1 x 4,096 (64-key tiles) 467 vs 585.
    h100_tuned = not rdna(arch) and (nvidia is None or nvidia >= (9, 0))
    max_rows = 64 if (decode_like or head_dim_pad > 128 or h100_tuned) else 128
    if elem_bytes > 2:
        max_rows = 16 if head_dim_pad > 128 or rdna(arch) else 32
    elif small_tiles:
        max_rows = 32 if head_dim_pad <= 128 else 16
    # tl.dot needs at least 16 rows; a group wider than max_rows still gets one token per program.
    block_m = max(16, group_pad, min(max_rows, group_pad * next_pow2(max_query_len)))
    block_q = block_m // group_pad
    block_n = (64 if head_dim_pad <= 128 else 32) if elem_bytes <= 2 else 16
    if small_tiles and (not rdna(arch) or block_m >= 32 or head_dim_pad > 128):
        block_n = 16  # (RDNA builds 16-row x 64-key decode tiles of head_dim 128 spill-free)
    elif (h100_tuned and not decode_like and block_n == 64
          and max_query_len < LONG_PREFILL_QUERY_LEN):
        block_n = 32
    # 128 rows, or 64 rows of head_dim 256: 8 warps' registers for the accumulator (sm_90).
    # Ampere/Ada (16x8x16 MMAs, accumulators per warp) need them from 64 rows of head_dim 128
    # (4 warps spill at head_dim 80 on sm_89), the small-tile GPUs from 32 rows (16 of 256).
    wide = 16 * 256 if small_tiles else 64 * 128 if nvidia and nvidia < (9, 0) else 128 * 128
    num_warps = 8 if block_m >= 128 or block_m * head_dim_pad >= wide else 4
    # Decode streams K/V once: two stages measured 0-8% faster than three on the H100
    # (benchmarks/triton_kernels.py --sweep: 375 vs 406 us for 256 x 1024-token Qwen3 rows).
    num_stages = 2 if (decode_like or head_dim_pad > 128 or block_m >= 128
                       or elem_bytes > 2 or h100_tuned) else 3
    if head_dim_pad > 128 and arch is not None and arch.startswith("gfx9"):
        num_stages = 1  # CDNA keeps the prefetched tile in VGPRs: 2 stages spill at 256

    if num_kv_splits is not None:
        num_splits = num_kv_splits
    elif not decode_like:
        num_splits = 1
    else:
        programs = num_seqs * cdiv(max_query_len, block_q) * num_kv_heads
        wanted = cdiv(4 * num_sms, max(programs, 1))  # ~4 resident programs per SM
        num_splits = max(1, min(wanted, cdiv(max_seq_len, MIN_KEYS_PER_SPLIT), MAX_SPLITS))
    if decode and num_splits == 1 and block_m <= 16 and head_dim_pad <= 128 and elem_bytes <= 2:
        # Decode with enough sequences to fill the GPU unsplit. On Hopper 128-key tiles halve
        # the loop trips (H100, 256 ragged Qwen3 sequences: 408 vs 418 us; 500 Llama ones:
        # 262 vs 264 us); their 128 KB of staged K/V fit its shared memory, not the 99 KB of
        # others. gfx1100 spills 57 VGPRs at 64 keys unsplit (none at 32; split, the reverse).
        if arch is None or nvidia == (9, 0):  # None: the interpreter
            block_n = 128
        elif rdna(arch):
            block_n = 32
    return AttentionLaunchSpec(block_q=block_q, block_m=block_m, block_n=block_n,
                               num_splits=num_splits, num_warps=num_warps,
                               num_stages=num_stages, decode=decode)


def _check_inputs(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  block_tables: torch.Tensor, query_start_loc: torch.Tensor,
                  seq_lens: torch.Tensor) -> None:
    check_tensor("q", q, ndim=3, dtypes=FLOAT_DTYPES)
    check_tensor("k_cache", k_cache, ndim=4, dtypes=(q.dtype,))
    check_tensor("v_cache", v_cache, ndim=4, dtypes=(q.dtype,))
    check_tensor("block_tables", block_tables, ndim=2, dtypes=INDEX_DTYPES)
    check_tensor("query_start_loc", query_start_loc, ndim=1, dtypes=INDEX_DTYPES)
    check_tensor("seq_lens", seq_lens, ndim=1, dtypes=INDEX_DTYPES)
    check_same_device(q=q, k_cache=k_cache, v_cache=v_cache, block_tables=block_tables,
                      query_start_loc=query_start_loc, seq_lens=seq_lens)
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache shape {tuple(v_cache.shape)} != "
                         f"k_cache shape {tuple(k_cache.shape)}")
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k_cache.shape[2]
    if k_cache.shape[3] != head_dim:
        raise ValueError(f"k_cache head_dim {k_cache.shape[3]} != q head_dim {head_dim}")
    if num_kv_heads == 0 or num_heads % num_kv_heads:
        raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    if head_dim < 16 or head_dim > 256:  # wider heads would need tiles that spill registers
        raise ValueError(f"head_dim {head_dim} not supported (16..256)")
    num_seqs = seq_lens.shape[0]
    if query_start_loc.shape[0] != num_seqs + 1:
        raise ValueError(f"query_start_loc has {query_start_loc.shape[0]} entries, "
                         f"expected num_seqs + 1 = {num_seqs + 1}")
    if block_tables.shape[0] != num_seqs:
        raise ValueError(f"block_tables has {block_tables.shape[0]} rows for {num_seqs} sequences")
    check_last_dim_contiguous("k_cache", k_cache)
    check_last_dim_contiguous("v_cache", v_cache)


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    block_tables: torch.Tensor, query_start_loc: torch.Tensor,
                    seq_lens: torch.Tensor, scale: float, sliding_window: int | None = None,
                    soft_cap: float | None = None, *, max_query_len: int | None = None,
                    max_seq_len: int | None = None,
                    num_kv_splits: int | None = None) -> torch.Tensor:
    """Causal attention of packed queries over paged K/V; see kernels/reference.py.

    Args:
        q: [num_tokens, num_heads, head_dim] fp16/bf16/fp32, the new tokens of all sequences.
        k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim], q's dtype.
        block_tables: [num_seqs, max_blocks_per_seq] int32/int64.
        query_start_loc: [num_seqs + 1]; seq_lens: [num_seqs] (cached + new tokens).
        scale: softmax scale; sliding_window: a query at p sees keys k with p - k < window;
        soft_cap: scores become soft_cap * tanh(scores / soft_cap).
        max_query_len, max_seq_len: host-side upper bounds; pass them to avoid a device
            sync. max_seq_len only steers tile sizes and split-KV, so any value gives the
            right result (a CUDA graph captured for one batch stays correct when its
            sequences grow); max_query_len == 1 promises at most one new token per sequence
            (a decode step) and takes the kernel's search-free path.
        num_kv_splits: force the split-KV factor (tests, tuning); None = heuristic.
    Returns:
        [num_tokens, num_heads, head_dim] in q's dtype (fp32 accumulation).
    """
    _check_inputs(q, k_cache, v_cache, block_tables, query_start_loc, seq_lens)
    if sliding_window is not None and int(sliding_window) < 1:
        raise ValueError(f"sliding_window must be >= 1 or None, got {sliding_window}")
    if soft_cap is not None and not soft_cap > 0:
        raise ValueError(f"soft_cap must be > 0 or None, got {soft_cap}")
    if num_kv_splits is not None and not 1 <= num_kv_splits <= 1024:
        raise ValueError(f"num_kv_splits must be in 1..1024, got {num_kv_splits}")
    if q.stride(-1) != 1:
        q = q.contiguous()
    if block_tables.stride(-1) != 1:
        block_tables = block_tables.contiguous()
    query_start_loc = query_start_loc.contiguous()
    seq_lens = seq_lens.contiguous()

    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    num_seqs = seq_lens.shape[0]
    out = empty((num_tokens, num_heads, head_dim), q.dtype, q.device)
    if num_tokens == 0 or num_seqs == 0:
        return out
    if max_query_len is None:  # device sync; callers on the hot path pass it
        max_query_len = int((query_start_loc[1:] - query_start_loc[:-1]).max())
    if max_seq_len is None:
        max_seq_len = int(seq_lens.max())
    max_query_len = max(1, max_query_len)

    spec = choose_launch(num_seqs=num_seqs, num_kv_heads=num_kv_heads, group=group,
                         head_dim=head_dim, max_query_len=max_query_len,
                         max_seq_len=max(1, max_seq_len), num_sms=num_sms(q.device),
                         num_kv_splits=num_kv_splits, elem_bytes=q.element_size(),
                         arch=gpu_arch(q.device))
    split_kv = spec.num_splits > 1
    # Scores are computed in log2 units (exp2 is the native instruction).
    qk_scale = float(scale) / float(soft_cap) if soft_cap is not None else float(scale) * LOG2E
    if split_kv:
        parts = (num_tokens, num_heads, spec.num_splits)
        part_acc = empty((*parts, head_dim), torch.float32, q.device)
        part_max = empty(parts, torch.float32, q.device)
        part_sum = empty(parts, torch.float32, q.device)
    else:  # unused by the kernel; any fp32 tensor satisfies the signature
        part_acc = part_max = part_sum = out.new_empty((1,), dtype=torch.float32)

    # Upper bound on query blocks; programs past the end of their sequence exit at once.
    blocks = num_seqs if spec.decode else num_tokens // spec.block_q + num_seqs
    # Decode: heads first (the programs running together read the same pages).
    grid = ((num_kv_heads, blocks, spec.num_splits) if spec.decode
            else (blocks, num_kv_heads, spec.num_splits))
    paged_attention_kernel[grid](
        out, part_acc, part_max, part_sum,
        q, k_cache, v_cache, block_tables, query_start_loc, seq_lens,
        qk_scale, float(soft_cap or 1.0) * LOG2E, int(sliding_window or 0),
        num_seqs, spec.num_splits,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0),
        GROUP=group, GROUP_PAD=next_pow2(group), BLOCK_Q=spec.block_q, BLOCK_M=spec.block_m,
        BLOCK_N=spec.block_n, HEAD_DIM=head_dim, HEAD_DIM_PAD=next_pow2(head_dim),
        PAGE_SIZE=k_cache.shape[1], SPLIT_KV=split_kv, DECODE=spec.decode,
        USE_WINDOW=sliding_window is not None, USE_SOFT_CAP=soft_cap is not None,
        # fp32 inputs: exact products (no TF32); fp16/bf16: the target's default.
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else None,
        num_warps=spec.num_warps, num_stages=spec.num_stages, **pdl_launch(q.device),
    )
    if split_kv:
        reduce_splits_kernel[(num_tokens, num_heads)](
            out, part_acc, part_max, part_sum, num_heads, spec.num_splits,
            out.stride(0), out.stride(1),
            SPLITS_PAD=next_pow2(spec.num_splits), HEAD_DIM=head_dim,
            HEAD_DIM_PAD=next_pow2(head_dim), num_warps=4, **pdl_launch(q.device),
        )
    return out
