"""GGUF block weights on the GPU, read as llama.cpp stores them: no dequantized copy.

A Q4_K_M 8B model is 4.9 GB in its blocks and 16 GB in bf16: the blocks are what lets it run
on an 8 GB card. They should also be faster at decode, where every step streams the weights,
but these kernels are not: on an H100 (session 20, docs/benchmarks.md) `gguf_matmul` reached
4-19% of the copy bandwidth, 1.4-4.4x slower than the bf16 layer, with 16 rows costing about
what 1 row does on most layers (the in-register dequantization is the bottleneck). One-row
steps therefore go through gguf_gemv.py; these kernels serve batched steps and lookups. Two
kernels read the raw rows (uint8 [rows, row_bytes]):
- `gguf_matmul`: y = x @ W^T for decode-sized batches. Each program dequantizes a [BLOCK_N,
  64] tile of W in registers (fp32, as ggml's dequantize_row_* computes it, then rounded to
  x's dtype) and multiplies it with `tl.dot`, K-step by K-step.
- `gguf_dequant`: rows of W (all, or the ones `ids` names) to a float tensor: embedding
  lookups, and larger batches, where one dequantization feeding cuBLAS beats dequantizing the
  same tile again for every block of rows (`gguf_linear` chooses).

Types: Q4_0, Q5_0, Q8_0 (32-value blocks) and Q4_K, Q5_K, Q6_K (256-value super-blocks),
which cover the usual Q4_K_M / Q5_K_M / Q6_K / Q8_0 files; the cuda backend dequantizes
layers of other types once at load. A K-step is 64 values: a quarter of a super-block (two
sub-blocks of Q4_K/Q5_K, four scale groups of Q6_K), or two 32-blocks (masked past K, which a
32-block type only needs to be a multiple of 32 of); a [BLOCK_N, 256] step spilled registers
on every GPU target (tests/kernels/test_triton_compile.py).
Ground truth: the `gguf` package's dequantization (`localserve.quant.gguf.dequantize`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from localserve.kernels.triton._common import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    check_last_dim_contiguous,
    check_same_device,
    check_tensor,
    empty,
    gpu_arch,
    nvidia_capability,
    pdl_launch,
    pdl_wait,
)
from localserve.quant.gguf import row_bytes, type_name

Q = GGMLQuantizationType
SUPPORTED_TYPES: frozenset[int] = frozenset(
    {Q.Q4_0, Q.Q5_0, Q.Q8_0, Q.Q4_K, Q.Q5_K, Q.Q6_K})
STEP = 64  # values of K per loop iteration (or dequantization program)
# Above this many rows of x, gguf_linear dequantizes W (in slices of at most DEQUANT_ROWS rows
# of W, to bound the scratch) and runs cuBLAS: the fused kernel redoes a tile's dequantization
# for every BLOCK_M rows of x. (A choice, not a measurement: the crossover is untimed.)
MAX_FUSED_ROWS = 32
DEQUANT_ROWS = 16384
# ggml type ids as the kernels' QTYPE constants.
Q4_0 = tl.constexpr(int(Q.Q4_0))
Q5_0 = tl.constexpr(int(Q.Q5_0))
Q8_0 = tl.constexpr(int(Q.Q8_0))
Q4_K = tl.constexpr(int(Q.Q4_K))
Q5_K = tl.constexpr(int(Q.Q5_K))
Q6_K = tl.constexpr(int(Q.Q6_K))


@triton.jit
def _fp16(ptr, mask):
    """The little-endian fp16 at ptr (two bytes) as fp32."""
    lo = tl.load(ptr, mask=mask, other=0).to(tl.uint16)
    hi = tl.load(ptr + 1, mask=mask, other=0).to(tl.uint16)
    return (lo | (hi << 8)).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _u8(ptr, mask):
    return tl.load(ptr, mask=mask, other=0).to(tl.int32)


@triton.jit
def _block32_tile(w_ptr, row_start, row_ok, step, K, QTYPE: tl.constexpr,
                  BYTES: tl.constexpr, BLOCK_N: tl.constexpr):
    """W[rows, 64 step .. 64 step + 63] of a 32-value block type (BYTES a block), fp32
    [BLOCK_N, 2, 32]: two blocks; a block past K reads as zeros."""
    blk2 = step * 2 + tl.arange(0, 2)[None, :]
    ok2 = row_ok[:, None] & (blk2 < K // 32)
    head = w_ptr + row_start[:, None] + blk2 * BYTES                 # [BLOCK_N, 2]
    d = _fp16(head, ok2)[:, :, None]
    ok = ok2[:, :, None]
    base = head[:, :, None]
    lane = tl.arange(0, 32)[None, None, :]                           # value in the block
    if QTYPE == Q8_0:  # d, 32 int8
        q = tl.load(base + 2 + lane, mask=ok, other=0).to(tl.int8, bitcast=True).to(tl.float32)
    else:  # Q4_0 (d, 16 bytes of nibbles) and Q5_0 (d, 32 high bits, 16 bytes of nibbles)
        NIBBLES: tl.constexpr = 2 if QTYPE == Q4_0 else 6
        byte = _u8(base + NIBBLES + lane % 16, ok)
        nib = tl.where(lane < 16, byte & 15, byte >> 4)
        if QTYPE == Q4_0:
            q = (nib - 8).to(tl.float32)
        else:
            high = (_u8(base + 2 + lane // 8, ok) >> (lane % 8)) & 1
            q = ((nib | (high << 4)) - 16).to(tl.float32)
    return q * d


@triton.jit
def _k_quant_tile(w_ptr, row_start, row_ok, step, QTYPE: tl.constexpr, BYTES: tl.constexpr,
                  BLOCK_N: tl.constexpr):
    """W[rows, 64 step .. 64 step + 63], a quarter of a K-quant super-block (BYTES each):
    fp32 [BLOCK_N, 64]."""
    head = w_ptr + row_start[:, None] + (step // 4) * BYTES          # [BLOCK_N, 1]
    j = step % 4                                                     # the quarter
    ok2 = row_ok[:, None]
    ok = ok2[:, :, None]
    base = head[:, :, None]
    if QTYPE == Q6_K:  # ql[128], qh[64], int8 scales[16], d; a scale per 16 values
        g16 = tl.arange(0, 4)[None, :, None]                         # 16-value group
        lane = tl.arange(0, 16)[None, None, :]
        half = j // 2
        quarter = 2 * (j % 2) + g16 // 2                             # 32 values of a half
        col = 16 * (g16 % 2) + lane                                  # 0..31 in the quarter
        low = _u8(base + 64 * half + 32 * (quarter % 2) + col, ok)
        low = tl.where(quarter < 2, low & 15, low >> 4)
        high = (_u8(base + 128 + 32 * half + col, ok) >> (2 * quarter)) & 3
        q = ((low | (high << 4)) - 32).to(tl.float32)
        scale = tl.load(head + 192 + 4 * j + tl.arange(0, 4)[None, :], mask=ok2, other=0)
        d = _fp16(head + 208, ok2)
        w = (d * scale.to(tl.int8, bitcast=True).to(tl.float32))[:, :, None] * q
    else:  # Q4_K / Q5_K: d, dmin, 6-bit scales and mins of 8 sub-blocks in 12 bytes, ...
        sub = 2 * j + tl.arange(0, 2)[None, :]                       # this quarter's two
        first = sub < 4
        a = _u8(head + 4 + tl.where(first, sub, sub + 4), ok2)
        b = _u8(head + 4 + tl.where(first, sub + 4, sub - 4), ok2)
        c = _u8(head + 4 + sub, ok2)
        scale = tl.where(first, a & 63, (a & 15) | ((b >> 6) << 4)).to(tl.float32)
        minimum = tl.where(first, b & 63, (a >> 4) | ((c >> 6) << 4)).to(tl.float32)
        d = _fp16(head, ok2) * scale
        m = _fp16(head + 2, ok2) * minimum
        sub3 = sub[:, :, None]
        lane = tl.arange(0, 32)[None, None, :]
        # ... then (Q5_K) 32 bytes of high bits, then 128 bytes of nibbles: a quarter's 64
        # values in 32 bytes, the low nibbles first.
        QS: tl.constexpr = 48 if QTYPE == Q5_K else 16
        nib = _u8(base + QS + 32 * j + lane, ok)
        nib = tl.where(sub3 % 2 == 0, nib & 15, nib >> 4)
        if QTYPE == Q5_K:
            nib = nib | (((_u8(base + 16 + lane, ok) >> sub3) & 1) << 4)
        w = d[:, :, None] * nib.to(tl.float32) - m[:, :, None]
    return tl.reshape(w, [BLOCK_N, 64])


@triton.jit
def _tile(w_ptr, rows, row_ok, row_bytes, step, K, QTYPE: tl.constexpr, BYTES: tl.constexpr,
          BLOCK_N: tl.constexpr):
    """fp32 [BLOCK_N, 64]: W[rows, 64 step ...], zeros for rows not ok and past K."""
    row_start = rows.to(tl.int64) * row_bytes
    if QTYPE == Q4_0 or QTYPE == Q5_0 or QTYPE == Q8_0:  # noqa: SIM109 (jit: no `in` here)
        w = tl.reshape(_block32_tile(w_ptr, row_start, row_ok, step, K, QTYPE, BYTES, BLOCK_N),
                       [BLOCK_N, 64])
    else:
        w = _k_quant_tile(w_ptr, row_start, row_ok, step, QTYPE, BYTES, BLOCK_N)
    return w


@triton.jit
def _gguf_matmul_kernel(x_ptr, w_ptr, out_ptr, M, N, K, stride_xm, stride_om, row_bytes,
                        QTYPE: tl.constexpr, BYTES: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_N: tl.constexpr, PRECISION: tl.constexpr, USE_PDL: tl.constexpr):
    pdl_wait(USE_PDL)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    ms = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = ms < M
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for step in range(0, tl.cdiv(K, 64)):
        w = _tile(w_ptr, rows, row_ok, row_bytes, step, K, QTYPE, BYTES, BLOCK_N)
        ks = step * 64 + tl.arange(0, 64)
        x = tl.load(x_ptr + ms.to(tl.int64)[:, None] * stride_xm + ks[None, :],
                    mask=m_ok[:, None] & (ks < K)[None, :], other=0.0)
        acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc, input_precision=PRECISION)
    out = out_ptr + ms.to(tl.int64)[:, None] * stride_om + rows[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & row_ok[None, :])


@triton.jit
def _gguf_dequant_kernel(w_ptr, ids_ptr, out_ptr, R, N, K, stride_o, row_bytes,
                         QTYPE: tl.constexpr, BYTES: tl.constexpr, BLOCK_N: tl.constexpr,
                         HAS_IDS: tl.constexpr, USE_PDL: tl.constexpr):
    pdl_wait(USE_PDL)
    r = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    r_ok = r < R
    if HAS_IDS:
        rows = tl.load(ids_ptr + r, mask=r_ok, other=0).to(tl.int64)
        row_ok = r_ok & (rows >= 0) & (rows < N)  # an id out of range reads nothing
    else:
        rows = r.to(tl.int64)
        row_ok = r_ok
    step = tl.program_id(1)
    w = _tile(w_ptr, rows, row_ok, row_bytes, step, K, QTYPE, BYTES, BLOCK_N)
    ks = step * 64 + tl.arange(0, 64)
    tl.store(out_ptr + r.to(tl.int64)[:, None] * stride_o + ks[None, :],
             w.to(out_ptr.dtype.element_ty), mask=r_ok[:, None] & (ks < K)[None, :])


def check_raw(raw: torch.Tensor, qtype: int, in_features: int) -> int:
    """Checks raw as `qtype` rows of `in_features` values; returns the bytes of one block."""
    check_tensor("raw", raw, ndim=2, dtypes=(torch.uint8,))
    if qtype not in SUPPORTED_TYPES:
        names = ", ".join(type_name(t) for t in sorted(SUPPORTED_TYPES))
        raise ValueError(f"the Triton GGUF kernels read {names}; got {type_name(qtype)}")
    values, size = GGML_QUANT_SIZES[Q(qtype)]
    if in_features <= 0 or in_features % values:
        raise ValueError(f"{type_name(qtype)} rows hold a multiple of {values} values; "
                         f"in_features is {in_features}")
    width = row_bytes(qtype, in_features)
    if raw.shape[1] != width or not raw.is_contiguous():
        raise ValueError(f"raw must be contiguous uint8 [rows, {width}] for {in_features} "
                         f"{type_name(qtype)} values a row; got {tuple(raw.shape)}")
    return size


def _tiles(m: int, device: torch.device) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) for m rows of x: one 16-row block at decode with 32 columns (more
    programs to stream W), 32 x 64 above. Turing (sm_75) spilled registers with 32-row blocks
    (32 or 64 columns; test_triton_compile.py) and keeps 16 x 32."""
    capability = nvidia_capability(gpu_arch(device))
    if m <= 16 or (capability is not None and capability < (8, 0)):
        return 16, 32
    return 32, 64


def gguf_matmul(x: torch.Tensor, raw: torch.Tensor, qtype: int,
                block_n: int | None = None) -> torch.Tensor:
    """x [M, K] @ W^T -> [M, N] in x's dtype (fp32 accumulation), W = raw's N rows of K
    `qtype` values dequantized in registers. The decode-sized path of `gguf_linear`."""
    check_tensor("x", x, ndim=2, dtypes=FLOAT_DTYPES)
    check_last_dim_contiguous("x", x)
    (m, k), n = x.shape, raw.shape[0]
    block_bytes = check_raw(raw, qtype, k)
    check_same_device(x=x, raw=raw)
    out = empty((m, n), x.dtype, x.device)
    if m == 0 or n == 0:
        return out
    block_m, tile_n = _tiles(m, x.device)
    block_n = block_n or tile_n
    _gguf_matmul_kernel[(triton.cdiv(n, block_n), triton.cdiv(m, block_m))](
        x, raw, out, m, n, k, x.stride(0), out.stride(0), raw.shape[1], QTYPE=int(qtype),
        BYTES=block_bytes, BLOCK_M=block_m, BLOCK_N=block_n,
        PRECISION="ieee" if x.dtype == torch.float32 else None,
        num_warps=4, num_stages=2, **pdl_launch(x.device))
    return out


def gguf_dequant(raw: torch.Tensor, qtype: int, in_features: int, dtype: torch.dtype,
                 ids: torch.Tensor | None = None) -> torch.Tensor:
    """W's rows (ids [T] of them, or all) as `dtype` [T or N, in_features]; an id outside
    [0, N) gives a row of zeros."""
    block_bytes = check_raw(raw, qtype, in_features)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be one of {FLOAT_DTYPES}, got {dtype}")
    n = raw.shape[0]
    if ids is not None:
        check_tensor("ids", ids, ndim=1, dtypes=INDEX_DTYPES)
        check_same_device(raw=raw, ids=ids)
        ids = ids.contiguous()
    rows = n if ids is None else ids.shape[0]
    out = empty((rows, in_features), dtype, raw.device)
    if rows == 0:
        return out
    block_n = 16
    _gguf_dequant_kernel[(triton.cdiv(rows, block_n), triton.cdiv(in_features, STEP))](
        raw, raw if ids is None else ids, out, rows, n, in_features, out.stride(0),
        raw.shape[1], QTYPE=int(qtype), BYTES=block_bytes, BLOCK_N=block_n,
        HAS_IDS=ids is not None,
        num_warps=4, **pdl_launch(raw.device))
    return out


def gguf_linear(x: torch.Tensor, raw: torch.Tensor, qtype: int,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] @ W^T (+ bias) -> [..., N] in x's dtype, W the raw GGUF rows: the fused
    kernel for up to MAX_FUSED_ROWS rows of x, else W dequantized slice by slice for cuBLAS."""
    check_tensor("x", x, dtypes=FLOAT_DTYPES)
    lead, k = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    n = raw.shape[0]
    if x2.shape[0] <= MAX_FUSED_ROWS:
        out = gguf_matmul(x2, raw, qtype)
    elif n <= DEQUANT_ROWS:
        out = torch.matmul(x2, gguf_dequant(raw, qtype, k, x.dtype).t())
    else:
        out = torch.empty((x2.shape[0], n), dtype=x.dtype, device=x.device)
        for start in range(0, n, DEQUANT_ROWS):
            w = gguf_dequant(raw[start:start + DEQUANT_ROWS], qtype, k, x.dtype)
            out[:, start:start + w.shape[0]] = torch.matmul(x2, w.t())
    if bias is not None:
        out += bias
    return out.reshape(*lead, n)
