"""Sampling in one read of the logits: argmax of logits / temperature + Gumbel noise.

argmax_i(l_i / T + G_i), with G_i = -log(-log U_i) independent, picks i with probability
softmax(l / T)_i (the Gumbel-max trick). The torch path makes an fp32 copy, divides, takes a
softmax, fills a noise tensor and divides again: about 12 bytes moved per logit against this
kernel's 2 (counted from the tensors each pass reads and writes, not profiled). Each row
draws its uniforms from Philox keyed by its own seed and the token index, so a row's token
depends only on its logits, temperature and seed (batch-invariant).
Temperature 0 is greedy: no noise, the first maximum wins (as torch.argmax). A row is cut
into chunks scanned by separate programs when the rows alone would not fill the GPU (decode
of one sequence: one program per row read 128k logits serially); a second launch picks the
first maximum across the chunks.
The ground truth is the distribution softmax(l / T) (kernels/reference.py: sampling_probs).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from localserve.kernels.triton._common import (
    FLOAT_DTYPES,
    check_last_dim_contiguous,
    check_same_device,
    check_tensor,
    empty,
    num_sms,
    pdl_launch,
    pdl_wait,
)

BLOCK = 1024
# A row is split over up to this many programs, each scanning a contiguous chunk of whole
# BLOCKs; `_pick_first_max_kernel` then picks across the chunks. One program per row scanned
# 128k logits block after block: ~56 us for one row in an H100 profile, ~1% of a token.
MAX_CHUNKS = 128
# Programs aimed for across the rows: 4-warp programs, up to 16 resident per SM.
PROGRAMS_PER_SM = 8


# temps and seeds may be views into one staged host copy, aligned by the batch size: no
# alignment specialisation (a variant compiled mid-serving; one scalar load each per row).
# The chunking changes with the batch: not specialised either.
@triton.jit(do_not_specialize=["chunk_size", "num_chunks"],
            do_not_specialize_on_alignment=["temps_ptr", "seeds_ptr"])
def _gumbel_argmax_kernel(
    part_val_ptr,       # [rows, MAX_CHUNKS] fp32: each chunk's best value
    part_idx_ptr,       # [rows, MAX_CHUNKS] int32: its first index
    logits_ptr,         # [rows, >= vocab], last dim contiguous
    temps_ptr,          # [rows] fp32; 0 = greedy
    seeds_ptr,          # [rows] int64, < 2**31
    vocab, stride_row,
    chunk_size,         # logits per chunk, a multiple of BLOCK
    num_chunks,
    BLOCK: tl.constexpr,
    MAX_CHUNKS: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    temp = tl.load(temps_ptr + row)
    seed = tl.load(seeds_ptr + row).to(tl.int32)
    base = logits_ptr + row.to(tl.int64) * stride_row
    inv_temp = 1.0 / tl.maximum(temp, 1e-30)
    best = tl.full([BLOCK], float("-inf"), tl.float32)
    best_idx = tl.zeros([BLOCK], tl.int32)
    lo = chunk * chunk_size
    hi = tl.minimum(lo + chunk_size, vocab)
    for start in range(lo, hi, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < hi
        x = tl.load(base + offs, mask=mask, other=float("-inf")).to(tl.float32)
        if temp > 0:
            # U in (0, 1): log(U) < 0, so the noise is finite except where U rounds to 0.
            # Keyed by the absolute index: the same noise however the row is chunked.
            u = tl.maximum(tl.rand(seed, offs), 1e-20)
            x = tl.where(mask, x * inv_temp - tl.log(-tl.log(u)), x)
        take = x > best  # strict: each lane keeps its first maximum
        best = tl.where(take, x, best)
        best_idx = tl.where(take, offs, best_idx)
    top = tl.max(best, axis=0)
    first = tl.min(tl.where(best == top, best_idx, vocab), axis=0)
    tl.store(part_val_ptr + row * MAX_CHUNKS + chunk, top)
    tl.store(part_idx_ptr + row * MAX_CHUNKS + chunk, first)


@triton.jit(do_not_specialize=["num_chunks"])
def _pick_first_max_kernel(
    out_ptr,            # [rows] int64
    part_val_ptr, part_idx_ptr,  # [rows, MAX_CHUNKS]
    vocab, num_chunks,
    MAX_CHUNKS: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    row = tl.program_id(0)
    offs = tl.arange(0, MAX_CHUNKS)
    ok = offs < num_chunks
    val = tl.load(part_val_ptr + row * MAX_CHUNKS + offs, mask=ok, other=float("-inf"))
    idx = tl.load(part_idx_ptr + row * MAX_CHUNKS + offs, mask=ok, other=0)
    top = tl.max(val, axis=0)
    # Chunks are in index order, so the smallest index among the maxima is the first maximum.
    first = tl.min(tl.where(ok & (val == top), idx, vocab), axis=0)
    tl.store(out_ptr + row, first.to(tl.int64))


def _chunking(rows: int, vocab: int, device: torch.device) -> tuple[int, int]:
    """(chunk_size, num_chunks): enough programs to fill the GPU, whole BLOCKs each."""
    wanted = triton.cdiv(PROGRAMS_PER_SM * num_sms(device), rows)
    num_chunks = max(1, min(wanted, triton.cdiv(vocab, BLOCK), MAX_CHUNKS))
    chunk_size = triton.cdiv(triton.cdiv(vocab, num_chunks), BLOCK) * BLOCK
    return chunk_size, triton.cdiv(vocab, chunk_size)


def gumbel_argmax(logits: torch.Tensor, temps: torch.Tensor, seeds: torch.Tensor,
                  vocab: int | None = None) -> torch.Tensor:
    """One token per row of logits [rows, >= vocab] (fp32/fp16/bf16, last dim contiguous):
    sampled from softmax(logits[:, :vocab] / temps) with Philox seeded by `seeds` (int64,
    in [0, 2**31)), or the argmax where temps is 0. Returns int64 [rows]."""
    check_tensor("logits", logits, ndim=2, dtypes=FLOAT_DTYPES)
    check_tensor("temps", temps, ndim=1, dtypes=(torch.float32,))
    check_tensor("seeds", seeds, ndim=1, dtypes=(torch.int64,))
    check_last_dim_contiguous("logits", logits)
    device = check_same_device(logits=logits, temps=temps, seeds=seeds)
    rows = logits.shape[0]
    vocab = logits.shape[1] if vocab is None else vocab
    if temps.shape[0] != rows or seeds.shape[0] != rows:
        raise ValueError(f"temps {tuple(temps.shape)} and seeds {tuple(seeds.shape)} need one "
                         f"entry per row ({rows})")
    if not 0 < vocab <= logits.shape[1]:
        raise ValueError(f"vocab {vocab} must be in [1, {logits.shape[1]}]")
    out = empty((rows,), torch.int64, device)
    if rows:
        chunk_size, num_chunks = _chunking(rows, vocab, device)
        part_val = empty((rows, MAX_CHUNKS), torch.float32, device)
        part_idx = empty((rows, MAX_CHUNKS), torch.int32, device)
        pdl = pdl_launch(device)
        _gumbel_argmax_kernel[(rows, num_chunks)](
            part_val, part_idx, logits, temps.contiguous(), seeds.contiguous(), vocab,
            logits.stride(0), chunk_size, num_chunks, BLOCK=BLOCK, MAX_CHUNKS=MAX_CHUNKS,
            num_warps=4, **pdl)
        _pick_first_max_kernel[(rows,)](out, part_val, part_idx, vocab, num_chunks,
                                        MAX_CHUNKS=MAX_CHUNKS, num_warps=4, **pdl)
    return out
