"""Sampling in one read of the logits: argmax of logits / temperature + Gumbel noise.

argmax_i(l_i / T + G_i), with G_i = -log(-log U_i) independent, picks i with probability
softmax(l / T)_i (the Gumbel-max trick). The torch path makes an fp32 copy, divides, takes a
softmax, fills a noise tensor and divides again: about 12 bytes moved per logit against this
kernel's 2 (counted from the tensors each pass reads and writes, not profiled). Each row
draws its uniforms from Philox keyed by its own seed and the token index, so a row's token
depends only on its logits, temperature and seed (batch-invariant).
Temperature 0 is greedy: no noise, the first maximum wins (as torch.argmax).
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
    pdl_launch,
    pdl_wait,
)

BLOCK = 1024


# temps and seeds may be views into one staged host copy, aligned by the batch size: no
# alignment specialisation (a variant compiled mid-serving; one scalar load each per row).
@triton.jit(do_not_specialize_on_alignment=["temps_ptr", "seeds_ptr"])
def _gumbel_argmax_kernel(
    out_ptr,            # [rows] int64
    logits_ptr,         # [rows, >= vocab], last dim contiguous
    temps_ptr,          # [rows] fp32; 0 = greedy
    seeds_ptr,          # [rows] int64, < 2**31
    vocab, stride_row,
    BLOCK: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_wait(USE_PDL)
    row = tl.program_id(0)
    temp = tl.load(temps_ptr + row)
    seed = tl.load(seeds_ptr + row).to(tl.int32)
    base = logits_ptr + row.to(tl.int64) * stride_row
    inv_temp = 1.0 / tl.maximum(temp, 1e-30)
    best = tl.full([BLOCK], float("-inf"), tl.float32)
    best_idx = tl.zeros([BLOCK], tl.int32)
    for start in range(0, vocab, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < vocab
        x = tl.load(base + offs, mask=mask, other=float("-inf")).to(tl.float32)
        if temp > 0:
            # U in (0, 1): log(U) < 0, so the noise is finite except where U rounds to 0.
            u = tl.maximum(tl.rand(seed, offs), 1e-20)
            x = tl.where(mask, x * inv_temp - tl.log(-tl.log(u)), x)
        take = x > best  # strict: each lane keeps its first maximum
        best = tl.where(take, x, best)
        best_idx = tl.where(take, offs, best_idx)
    top = tl.max(best, axis=0)
    first = tl.min(tl.where(best == top, best_idx, vocab), axis=0)
    tl.store(out_ptr + row, first.to(tl.int64))


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
        _gumbel_argmax_kernel[(rows,)](out, logits, temps.contiguous(), seeds.contiguous(),
                                       vocab, logits.stride(0), BLOCK=BLOCK, num_warps=4,
                                       **pdl_launch(device))
    return out
