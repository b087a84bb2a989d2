"""Triton kernels of paged attention: one forward kernel for every phase, one split-KV reduction.

The forward kernel is an online-softmax (FlashAttention-style) loop over key tiles of one
sequence's paged cache. One program owns BLOCK_Q query tokens of one sequence times the
GROUP query heads that share one KV head, i.e. BLOCK_M = BLOCK_Q * GROUP_PAD rows, so each K/V
tile is loaded once for the whole group (GQA/MQA). Rows are ordered token-major:
row m -> token m // GROUP_PAD, head kv_head * GROUP + m % GROUP_PAD.

Programs are numbered over "query blocks" of the packed batch without a host-side index:
sequence s owns blocks [qsl[s] // BLOCK_Q + s, ...); a binary search over query_start_loc finds
the sequence of a program (the `+ s` keeps that index strictly increasing, even for sequences
with no new tokens). Programs past the end of their sequence return at once. Decode steps (at
most one new token per sequence, DECODE) skip the search: program i is sequence i.

With SPLIT_KV (flash-decoding), the key tiles a block needs are cut into `num_splits`
chunks, one program each; every program then writes its unnormalised accumulator and its
running max / sum (log2 domain) and `reduce_splits_kernel` merges them.
"""

from __future__ import annotations

import triton
import triton.language as tl

from localserve.kernels.triton._common import pdl_wait


@triton.jit
def _find_sequence(query_start_loc_ptr, q_block, num_seqs, BLOCK_Q: tl.constexpr):
    """Largest s with query_start_loc[s] // BLOCK_Q + s <= q_block (binary search)."""
    lo = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        first_block = tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid
        if first_block <= q_block:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _tanh(x):
    # Portable across CUDA, ROCm and the interpreter (no libdevice).
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _attend_tiles(
    acc, l_i, m_i,      # [BLOCK_M, HEAD_DIM_PAD], [BLOCK_M], [BLOCK_M] online-softmax state
    q, q_pos,           # [BLOCK_M, HEAD_DIM_PAD], [BLOCK_M] absolute query positions
    k_head_ptr, v_head_ptr,  # caches offset to this program's KV head
    table,              # this sequence's block-table row
    stride_kb, stride_ks, stride_vb, stride_vs,
    tile_lo, tile_hi,   # key tiles [tile_lo, tile_hi) of BLOCK_N keys
    kv_begin, kv_end,   # keys outside [kv_begin, kv_end) are never loaded (MASKED)
    sliding_window, qk_scale, soft_cap_log2,
    BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    PAGE_SIZE: tl.constexpr, MASKED: tl.constexpr, USE_WINDOW: tl.constexpr,
    USE_SOFT_CAP: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Folds key tiles into (acc, l_i, m_i); MASKED applies range, causal and window masks."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    dim_ok = offs_d < HEAD_DIM
    for tile in range(tile_lo, tile_hi):
        k_pos = tile * BLOCK_N + offs_n                             # [BLOCK_N]
        # Pages wholly outside [kv_begin, kv_end) are never read: a sliding-window layer's
        # cache may already have given them back.
        k_ok = (k_pos >= kv_begin) & (k_pos < kv_end)
        if MASKED:
            page = tl.load(table + k_pos // PAGE_SIZE, mask=k_ok, other=0).to(tl.int64)
            k_mask = k_ok[None, :] & dim_ok[:, None]
            v_mask = k_ok[:, None] & dim_ok[None, :]
        else:
            page = tl.load(table + k_pos // PAGE_SIZE).to(tl.int64)
            k_mask = dim_ok[:, None]
            v_mask = dim_ok[None, :]
        in_page = k_pos % PAGE_SIZE
        k_off = page * stride_kb + in_page * stride_ks
        v_off = page * stride_vb + in_page * stride_vs
        k = tl.load(k_head_ptr + k_off[None, :] + offs_d[:, None], mask=k_mask,
                    other=0.0)                                      # [HEAD_DIM_PAD, BLOCK_N]
        s = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N]
        if USE_SOFT_CAP:  # scores are kept in log2 units: exp2 below
            s = soft_cap_log2 * _tanh(s)
        if MASKED:
            allowed = k_ok[None, :] & (k_pos[None, :] <= q_pos[:, None])
            if USE_WINDOW:
                allowed = allowed & (q_pos[:, None] - k_pos[None, :] < sliding_window)
            s = tl.where(allowed, s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # A row with nothing allowed yet keeps max -inf; shift by 0 so exp2 gives 0, not NaN.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_shift[:, None])
        alpha = tl.math.exp2(m_i - m_shift)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_head_ptr + v_off[:, None] + offs_d[None, :], mask=v_mask,
                    other=0.0)                                      # [BLOCK_N, HEAD_DIM_PAD]
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


# Batch-dependent integers are not specialised: Triton would compile a new variant the first
# time one is 1 or a multiple of 16, in the middle of serving (a second or more each).
@triton.jit(do_not_specialize=["num_seqs", "num_splits", "stride_bt"])
def paged_attention_kernel(
    out_ptr,            # [num_tokens, num_heads, head_dim]                (not SPLIT_KV)
    part_acc_ptr,       # [num_tokens, num_heads, num_splits, head_dim] fp32 (SPLIT_KV)
    part_max_ptr,       # [num_tokens, num_heads, num_splits] fp32, log2 domain
    part_sum_ptr,       # [num_tokens, num_heads, num_splits] fp32
    q_ptr,              # [num_tokens, num_heads, head_dim]
    k_cache_ptr,        # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache_ptr,        # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables_ptr,   # [num_seqs, max_blocks_per_seq]
    query_start_loc_ptr,  # [num_seqs + 1]
    seq_lens_ptr,       # [num_seqs]
    qk_scale,           # scale * log2(e), or scale / soft_cap with USE_SOFT_CAP
    soft_cap_log2,      # soft_cap * log2(e) (USE_SOFT_CAP)
    sliding_window,     # keys with q_pos - k_pos >= window are masked (USE_WINDOW)
    num_seqs,
    num_splits,         # programs per query block along the keys (SPLIT_KV)
    stride_qt, stride_qh,
    stride_ot, stride_oh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_bt,
    GROUP: tl.constexpr,        # query heads per KV head
    GROUP_PAD: tl.constexpr,    # GROUP rounded up to a power of two
    BLOCK_Q: tl.constexpr,      # query tokens per program
    BLOCK_M: tl.constexpr,      # BLOCK_Q * GROUP_PAD rows
    BLOCK_N: tl.constexpr,      # keys per tile
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    PAGE_SIZE: tl.constexpr,    # tokens per cache block
    SPLIT_KV: tl.constexpr,
    DECODE: tl.constexpr,       # at most one query token per sequence (grid: heads, sequences)
    USE_WINDOW: tl.constexpr,
    USE_SOFT_CAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    split = tl.program_id(2)
    if DECODE:
        # At most one new token per sequence: program (h, i) is KV head h of sequence i. The
        # binary search would put ~log2(num_seqs) dependent loads before the first K/V load.
        # Heads vary fastest, so the programs running together read neighbouring heads of the
        # same pages (H100: 1% faster than sequences first; triton_kernels.py decode_paths).
        kv_head = tl.program_id(0)
        num_kv_heads = tl.num_programs(0)
        seq = tl.program_id(1)
    else:
        kv_head = tl.program_id(1)
        num_kv_heads = tl.num_programs(1)
        # Last query blocks first: under the causal mask they see the most keys, so the
        # longest programs start in the first wave and the short ones fill the tail.
        q_block = tl.num_programs(0) - 1 - tl.program_id(0)
        seq = _find_sequence(query_start_loc_ptr, q_block, num_seqs, BLOCK_Q)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    local_block = 0 if DECODE else q_block - (q_start // BLOCK_Q + seq)
    if local_block * BLOCK_Q >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    context_len = seq_len - q_len

    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    q_idx = local_block * BLOCK_Q + offs_m // GROUP_PAD            # [BLOCK_M] within the seq
    head_in_group = offs_m % GROUP_PAD
    head = kv_head * GROUP + head_in_group                          # [BLOCK_M]
    row_ok = (q_idx < q_len) & (head_in_group < GROUP)
    dim_ok = offs_d < HEAD_DIM
    q_pos = context_len + q_idx                                     # absolute positions
    token = (q_start + q_idx).to(tl.int64)

    q = tl.load(q_ptr + token[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :],
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)  # [BLOCK_M, HEAD_DIM_PAD]

    # Keys this block needs: up to its last query (causal), from its first query's window.
    first_q_pos = context_len + local_block * BLOCK_Q
    kv_end = tl.minimum(first_q_pos + BLOCK_Q, seq_len)
    kv_begin = 0
    if USE_WINDOW:
        kv_begin = tl.maximum(first_q_pos - sliding_window + 1, 0)
    tile_lo = kv_begin // BLOCK_N
    tile_hi = tl.cdiv(kv_end, BLOCK_N)
    if SPLIT_KV:
        tiles_per_split = tl.cdiv(tile_hi - tile_lo, num_splits)
        tile_lo = tile_lo + split * tiles_per_split
        tile_hi = tl.minimum(tile_lo + tiles_per_split, tile_hi)

    # Tiles every real row may see whole (no causal/window/range mask) run unmasked: keys up
    # to the block's first query, and from its last query's window start.
    last_q_pos = tl.minimum(first_q_pos + BLOCK_Q - 1, seq_len - 1)
    full_lo = tile_lo
    if USE_WINDOW:
        full_lo = tl.maximum(tl.cdiv(tl.maximum(last_q_pos - sliding_window + 1, 0), BLOCK_N),
                             tile_lo)
    full_lo = tl.minimum(full_lo, tile_hi)
    full_hi = tl.minimum(tl.maximum((first_q_pos + 1) // BLOCK_N, full_lo), tile_hi)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)      # running max (log2)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)                     # running sum
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)
    table = block_tables_ptr + seq.to(tl.int64) * stride_bt
    k_head = k_cache_ptr + kv_head * stride_kh
    v_head = v_cache_ptr + kv_head * stride_vh

    acc, l_i, m_i = _attend_tiles(
        acc, l_i, m_i, q, q_pos, k_head, v_head, table, stride_kb, stride_ks, stride_vb,
        stride_vs, tile_lo, full_lo, kv_begin, kv_end, sliding_window, qk_scale, soft_cap_log2,
        BLOCK_N, HEAD_DIM, HEAD_DIM_PAD, PAGE_SIZE, True, USE_WINDOW, USE_SOFT_CAP,
        DOT_PRECISION)
    acc, l_i, m_i = _attend_tiles(
        acc, l_i, m_i, q, q_pos, k_head, v_head, table, stride_kb, stride_ks, stride_vb,
        stride_vs, full_lo, full_hi, kv_begin, kv_end, sliding_window, qk_scale, soft_cap_log2,
        BLOCK_N, HEAD_DIM, HEAD_DIM_PAD, PAGE_SIZE, False, USE_WINDOW, USE_SOFT_CAP,
        DOT_PRECISION)
    acc, l_i, m_i = _attend_tiles(
        acc, l_i, m_i, q, q_pos, k_head, v_head, table, stride_kb, stride_ks, stride_vb,
        stride_vs, full_hi, tile_hi, kv_begin, kv_end, sliding_window, qk_scale, soft_cap_log2,
        BLOCK_N, HEAD_DIM, HEAD_DIM_PAD, PAGE_SIZE, True, USE_WINDOW, USE_SOFT_CAP,
        DOT_PRECISION)

    if not SPLIT_KV:
        l_safe = tl.where(l_i > 0.0, l_i, 1.0)
        out = acc / l_safe[:, None]
        tl.store(out_ptr + token[:, None] * stride_ot + head[:, None] * stride_oh
                 + offs_d[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & dim_ok[None, :])
    else:
        row = (token * (GROUP * num_kv_heads) + head) * num_splits + split  # [BLOCK_M]
        tl.store(part_max_ptr + row, m_i, mask=row_ok)
        tl.store(part_sum_ptr + row, l_i, mask=row_ok)
        tl.store(part_acc_ptr + row[:, None] * HEAD_DIM + offs_d[None, :], acc,
                 mask=row_ok[:, None] & dim_ok[None, :])


@triton.jit(do_not_specialize=["num_splits"])
def reduce_splits_kernel(
    out_ptr,            # [num_tokens, num_heads, head_dim]
    part_acc_ptr,       # [num_tokens, num_heads, num_splits, head_dim] fp32
    part_max_ptr,       # [num_tokens, num_heads, num_splits] fp32
    part_sum_ptr,       # [num_tokens, num_heads, num_splits] fp32
    num_heads,
    num_splits,
    stride_ot, stride_oh,
    SPLITS_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    token = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    split_ok = offs_s < num_splits
    dim_ok = offs_d < HEAD_DIM
    row = (token * num_heads + head) * num_splits + offs_s        # [SPLITS_PAD]
    m = tl.load(part_max_ptr + row, mask=split_ok, other=float("-inf"))
    l_s = tl.load(part_sum_ptr + row, mask=split_ok, other=0.0)
    acc = tl.load(part_acc_ptr + row[:, None] * HEAD_DIM + offs_d[None, :],
                  mask=split_ok[:, None] & dim_ok[None, :], other=0.0)  # [SPLITS_PAD, HEAD_DIM_PAD]
    m_max = tl.max(m, axis=0)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)
    w = tl.math.exp2(m - m_max)                                    # empty splits weigh 0
    total = tl.sum(l_s * w, axis=0)
    total = tl.where(total > 0.0, total, 1.0)
    out = tl.sum(acc * w[:, None], axis=0) / total                 # [HEAD_DIM_PAD]
    tl.store(out_ptr + token * stride_ot + head * stride_oh + offs_d,
             out.to(out_ptr.dtype.element_ty), mask=dim_ok)
