"""Few-row GGUF matmuls on int8 tensor cores: y = x @ W^T for x [M, K], M up to MAX_ROWS.

A batched decode step (a few sequences) reads every weight once, as batch 1 does, but does M
times the arithmetic. `gguf_matmul` dequantizes each weight to a float for `tl.dot`, and that
dequantization (byte gathers, an int-to-float conversion and a scale a value) bounds it at
4-19% of an H100's copy bandwidth (session 20). Here, as llama.cpp's MMQ kernels do, x is
quantized instead (quantize.py's `quantize_q8`: int8 in blocks of 32 values, one fp32 scale
each; or passed in already quantized, by the RMSNorm or activation that produced x) and the
weights stay small integers:
- a weight code becomes an int8 with a mask or a shift (Q6_K: and 32 taken away); int8
  `tl.dot`s of one 32-value block (one scale of x, one of W) give exact int32 sums;
- each sum times x's block scale and the weight's block scale goes to an fp32 accumulator;
  the weight's offsets (Q4_K/Q5_K's minimums, Q4_0's 8, Q5_0's 16) multiply x's block sums
  (`s`: scale x the block's int8 sum, as llama.cpp's q8_1 keeps it) instead of every value;
- Q6_K's 16-value scales take two dots a block, each with the other half of x zeroed.
The result equals x' @ W^T in fp32 up to the order of fp32 operations, x' being x after its
int8 round trip (`kernels.reference.quantize_q8`); against x itself the error is the
quantization's: at most half a step (|the block's largest value| / 254) a value of x.
Each program owns BLOCK_N rows of W and BLOCK_M rows of x and walks K PARTS runs of 64 values
(two blocks of x each) a step, K in shares for layers of few rows (`split_for`, as in
gguf_gemv.py). Rows of W past N and of x past M repeat the last one and are not stored.
Triton 3.6 has int8 dots on NVIDIA sm_80 and newer and on AMD (`int8_dots`); Turing (sm_75)
fails to compile them (test_triton_compile.py), so it keeps `gguf_matmul`.
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
    gpu_arch,
    nvidia_capability,
    pdl_launch,
    pdl_wait,
    rdna,
)
from localserve.kernels.triton.gguf import Q4_0, Q4_K, Q5_0, Q5_K, Q6_K, Q8_0, check_raw
from localserve.kernels.triton.gguf_gemv import (
    _fp16,
    _k4_min_of,
    _k4_scale_of,
    _ld,
    share_of_k,
    shares_for,
    split_k_scratch,
    store_sum_of_shares,
)
from localserve.kernels.triton.quantize import Q8, check_q8, quantize_q8

MAX_ROWS = 32  # more rows of x: gguf_linear dequantizes W for cuBLAS


@triton.jit
def _bytes(ptr, ok, WIDTH: tl.constexpr, ALIGNED: tl.constexpr, EVEN: tl.constexpr):
    """[BLOCK_N, WIDTH] bytes (as int32) from byte addresses ptr [BLOCK_N] (ok [BLOCK_N]
    unless EVEN): one load when ALIGNED (16-byte aligned: Q4_K/Q5_K blocks), else as 16-bit
    halves (every GGUF block is 2-byte aligned) split into their bytes."""
    if EVEN:  # noqa: SIM108 (a constexpr branch)
        mask = ok
    else:
        mask = ok[:, None]
    if ALIGNED:
        b = _ld(ptr[:, None] + tl.arange(0, WIDTH)[None, :], mask, EVEN).to(tl.int32)
    else:
        halves = ptr.to(tl.pointer_type(tl.uint16))[:, None] + tl.arange(0, WIDTH // 2)[None, :]
        h = _ld(halves, mask, EVEN).to(tl.int32)
        b = tl.reshape(tl.join(h & 255, h >> 8), [ptr.shape[0], WIDTH])
    return b


@triton.jit
def _x_block(xq_ptr, x_rows, v, ok, EVEN: tl.constexpr):
    """[BLOCK_M, 32] int8: x's quantized values v .. v + 31 of each row (x_rows: offsets)."""
    return _ld(xq_ptr + x_rows[:, None] + v + tl.arange(0, 32)[None, :], ok, EVEN)


@triton.jit
def _x_scale(ptr, x_blocks, block, ok, EVEN: tl.constexpr):
    """[BLOCK_M, 1]: x's scale (or scaled sum) of block `block` of each row."""
    return _ld(ptr + x_blocks + block, ok, EVEN)[:, None]


@triton.jit
def _idot(x, w):
    """int32 [BLOCK_M, BLOCK_N] = x [BLOCK_M, 32] int8 @ w [BLOCK_N, 32] (int32 holding int8
    values)^T, as floats."""
    return tl.dot(x, tl.trans(w.to(tl.int8)), out_dtype=tl.int32).to(tl.float32)


@triton.jit
def _k4_head(head):
    """Q4_K/Q5_K: a super-block's first 16 bytes (d, dmin and the 12 bytes of 6-bit scales and
    minimums) as four [BLOCK_N] int32 words, in one 16-byte load a row: read byte by byte,
    their scattered loads were most of the kernel's load instructions."""
    words = tl.load(head.to(tl.pointer_type(tl.int32))[:, None] + tl.arange(0, 4)[None, :])
    even, odd = tl.split(tl.reshape(words, [head.shape[0], 2, 2]))  # words 0, 2 and 1, 3
    w0, w2 = tl.split(even)
    w1, w3 = tl.split(odd)
    return w0, w1, w2, w3


@triton.jit
def _half_f32(word, SHIFT: tl.constexpr):
    """The fp16 in bits SHIFT .. SHIFT + 15 of int32 words, as fp32."""
    return ((word >> SHIFT) & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _k4_scale_min(w1, w2, w3, j):
    """Sub-block j's scale and minimum from the head's words 1-3 (scale bytes 0-3, 4-7,
    8-11)."""
    shift = 8 * (j & 3)
    low, high, top = (w1 >> shift) & 255, (w2 >> shift) & 255, (w3 >> shift) & 255
    return _k4_scale_of(low, top, j), _k4_min_of(high, top, j)


@triton.jit
def _step_k4(w_ptr, xq_ptr, xd_ptr, xs_ptr, row_start, x_rows, x_blocks, v0,
             QTYPE: tl.constexpr, BYTES: tl.constexpr):
    """Q4_K/Q5_K: quarter super-block v0 // 64: bytes 32q .. 32q + 31 of qs hold values
    64q + i (low nibbles) and 64q + 32 + i (high), sub-blocks 2q and 2q + 1."""
    q = (v0 // 64) % 4
    head = w_ptr + row_start + (v0 // 256) * BYTES                          # [BLOCK_N]
    ok = True  # rows of whole super-blocks (K % 256 == 0): every load is in bounds
    QS: tl.constexpr = 48 if QTYPE == Q5_K else 16
    codes = _bytes(head + QS + 32 * q, ok, 32, True, True)
    lo = codes & 15
    hi = codes >> 4
    if QTYPE == Q5_K:  # a fifth bit per value: bit 2q (low) or 2q + 1 (high) of qh byte i
        qh = _bytes(head + 16, ok, 32, True, True) >> (2 * q)
        lo = lo | ((qh & 1) << 4)
        hi = hi | ((qh & 2) << 3)
    i_lo = _idot(_x_block(xq_ptr, x_rows, v0, ok, True), lo)
    i_hi = _idot(_x_block(xq_ptr, x_rows, v0 + 32, ok, True), hi)
    w0, w1, w2, w3 = _k4_head(head)
    d = _half_f32(w0, 0)
    dmin = _half_f32(w0, 16)
    scale_lo, min_lo = _k4_scale_min(w1, w2, w3, 2 * q)
    scale_hi, min_hi = _k4_scale_min(w1, w2, w3, 2 * q + 1)
    block = v0 // 32
    return ((i_lo * _x_scale(xd_ptr, x_blocks, block, ok, True) * (d * scale_lo)[None, :])
            + (i_hi * _x_scale(xd_ptr, x_blocks, block + 1, ok, True) * (d * scale_hi)[None, :])
            - _x_scale(xs_ptr, x_blocks, block, ok, True) * (dmin * min_lo)[None, :]
            - _x_scale(xs_ptr, x_blocks, block + 1, ok, True) * (dmin * min_hi)[None, :])


@triton.jit
def _step_q6_k(w_ptr, xq_ptr, xd_ptr, row_start, x_rows, x_blocks, v0, BYTES: tl.constexpr):
    """Q6_K: values 64 (2n + h) + i of a super-block (n, h = 0 or 1): ql bytes 64n + i
    (i < 32) and 64n + 32 + i, their low (h = 0) or high (h = 1) nibble, with bits 4h and
    4h + 2 of qh byte 32n + i on top, minus 32; a scale every 16 values."""
    quarter = (v0 // 64) % 4
    n = quarter // 2
    h = quarter % 2
    head = w_ptr + row_start + (v0 // 256) * BYTES
    ok = True  # rows of whole super-blocks: every load is in bounds
    ql_a = _bytes(head + 64 * n, ok, 32, False, True)
    ql_b = _bytes(head + 64 * n + 32, ok, 32, False, True)
    qh = _bytes(head + 128 + 32 * n, ok, 32, False, True) >> (4 * h)
    first = (((ql_a >> (4 * h)) & 15) | ((qh & 3) << 4)) - 32
    second = (((ql_b >> (4 * h)) & 15) | ((qh & 12) << 2)) - 32
    half = (tl.arange(0, 32) < 16)[None, :]
    x_a = _x_block(xq_ptr, x_rows, v0, ok, True)
    x_b = _x_block(xq_ptr, x_rows, v0 + 32, ok, True)
    d = _fp16(head + 208, ok, True)
    sc = head + 192 + v0 % 256 // 16                                       # this step's 4
    block = v0 // 32
    return (_x_scale(xd_ptr, x_blocks, block, ok, True)
            * (_idot(tl.where(half, x_a, 0), first) * _q6_scale(d, sc, 0)
               + _idot(tl.where(half, 0, x_a), first) * _q6_scale(d, sc, 1))
            + _x_scale(xd_ptr, x_blocks, block + 1, ok, True)
            * (_idot(tl.where(half, x_b, 0), second) * _q6_scale(d, sc, 2)
               + _idot(tl.where(half, 0, x_b), second) * _q6_scale(d, sc, 3)))


@triton.jit
def _q6_scale(d, sc, k: tl.constexpr):
    """[1, BLOCK_N]: d x the int8 scale at sc + k."""
    return (d * _ld(sc + k, True, True).to(tl.int8, bitcast=True).to(tl.float32))[None, :]


@triton.jit
def _step_block32(w_ptr, xq_ptr, xd_ptr, xs_ptr, row_start, x_rows, x_blocks, v0, K,
                  QTYPE: tl.constexpr, BYTES: tl.constexpr, EVEN: tl.constexpr):
    """Q4_0 / Q5_0 / Q8_0: the two 32-value blocks from v0 (the second past K when K is an
    odd number of blocks: then zeros)."""
    QS: tl.constexpr = 2 if QTYPE == Q4_0 else 6  # the codes' byte in a Q4_0 / Q5_0 block
    OFFSET: tl.constexpr = 8 if QTYPE == Q4_0 else 16
    acc = tl.zeros([x_rows.shape[0], row_start.shape[0]], tl.float32)
    for k in tl.static_range(2):
        block = v0 // 32 + k
        inside = block * 32 < K
        head = w_ptr + row_start + block * BYTES
        ok = (row_start >= 0) & inside  # [BLOCK_N]
        x_ok = (x_rows >= 0)[:, None] & inside
        if QTYPE == Q8_0:  # d, then 32 int8 values
            w = _bytes(head + 2, ok, 32, False, EVEN)
            w = w - ((w & 128) << 1)  # the bytes' signs
            x = _x_block(xq_ptr, x_rows, 32 * block, x_ok, EVEN)
            acc += (_idot(x, w) * _x_scale(xd_ptr, x_blocks, block, inside, EVEN)
                    * _fp16(head, ok, EVEN)[None, :])
        else:  # 16 bytes: value i in byte i's low nibble, 16 + i in its high one
            codes = _bytes(head + QS, ok, 16, False, EVEN)
            lo = codes & 15
            hi = codes >> 4
            if QTYPE == Q5_0:  # 32 high bits after d: value i's is bit i
                bits = (_ld(head.to(tl.pointer_type(tl.uint16)) + 1, ok, EVEN).to(tl.int32)
                        | (_ld(head.to(tl.pointer_type(tl.uint16)) + 2, ok, EVEN)
                           .to(tl.int32) << 16))[:, None]
                i = tl.arange(0, 16)[None, :]
                lo = lo | (((bits >> i) & 1) << 4)
                hi = hi | (((bits >> (i + 16)) & 1) << 4)
            # The dot takes values in the order lo 0, hi 0, lo 1, ...: x's gathered to match.
            w = tl.reshape(tl.join(lo, hi), [row_start.shape[0], 32])
            j = tl.arange(0, 32)
            x = _ld(xq_ptr + x_rows[:, None] + 32 * block + (j // 2 + 16 * (j % 2))[None, :],
                    x_ok, EVEN)
            acc += ((_idot(x, w) * _x_scale(xd_ptr, x_blocks, block, inside, EVEN)
                     - OFFSET * _x_scale(xs_ptr, x_blocks, block, inside, EVEN))
                    * _fp16(head, ok, EVEN)[None, :])
    return acc


@triton.jit
def _gguf_q8_kernel(xq_ptr, xd_ptr, xs_ptr, w_ptr, y_ptr, partial_ptr, arrived_ptr, M, N, K,
                    row_bytes, QTYPE: tl.constexpr, BYTES: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, PARTS: tl.constexpr, EVEN: tl.constexpr,
                    SPLIT_K: tl.constexpr, USE_PDL: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_start = tl.minimum(rows, N - 1).to(tl.int64) * row_bytes
    m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    x_rows = tl.minimum(m, M - 1) * K
    x_blocks = tl.minimum(m, M - 1) * (K // 32)
    pdl_wait(USE_PDL)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    # A step: PARTS runs of 64 values, their loads together.
    first, steps = share_of_k(tl.cdiv(K, 64 * PARTS), SPLIT_K, 2)
    for step in range(first, steps):
        for part in tl.static_range(PARTS):
            v0 = (step * PARTS + part) * 64
            if QTYPE == Q4_K or QTYPE == Q5_K:  # noqa: SIM109 (jit: no `in` here)
                acc += _step_k4(w_ptr, xq_ptr, xd_ptr, xs_ptr, row_start, x_rows, x_blocks, v0,
                                QTYPE, BYTES)
            elif QTYPE == Q6_K:
                acc += _step_q6_k(w_ptr, xq_ptr, xd_ptr, row_start, x_rows, x_blocks, v0,
                                  BYTES)
            else:
                acc += _step_block32(w_ptr, xq_ptr, xd_ptr, xs_ptr, row_start, x_rows,
                                     x_blocks, v0, K, QTYPE, BYTES, EVEN)
    out = m[:, None] * N + rows[None, :]
    stored = (m[:, None] < M) & (rows[None, :] < N)
    if SPLIT_K:
        tile = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
        store_sum_of_shares(acc, y_ptr, partial_ptr, arrived_ptr, out, stored, M * N, tile, 2)
    else:
        tl.store(y_ptr + out, acc.to(y_ptr.dtype.element_ty), mask=stored)


def int8_dots(device: torch.device) -> bool:
    """Whether this kernel builds for `device`: not on NVIDIA before Ampere (sm_80)."""
    capability = nvidia_capability(gpu_arch(device))
    return capability is None or capability >= (8, 0)


def tile_for(qtype: int, m: int, device: torch.device) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, 64-value parts a step, warps, stages) for m rows of x of a `qtype`
    layer: 16 rows of x (the smallest int8 dot) up to 16, else 32. On NVIDIA, Q4_K and Q6_K
    (Q4_K_M's types) take the fastest tiles of two H100 sweeps of Llama-3-8B's four layer
    shapes at 4, 16 and 32 rows (session 24, docs/benchmarks.md): 64 rows of W up to 16 rows
    of x, 128 above; Q4_K four parts a step up to 16 rows, two and three stages above. Q6_K
    measured fastest with two parts, which spill registers (test_triton_compile.py), so it
    takes one. The other types (unswept: 128 rows spill for Q5_K on sm_89) and AMD keep
    session 22's 64 x 1; RDNA3 takes 32 rows of W (64 spilled)."""
    block_m = 16 if m <= 16 else 32
    arch = gpu_arch(device)
    if rdna(arch):
        return block_m, 32, 1, 4, 2
    nvidia = arch is None or nvidia_capability(arch) is not None  # the interpreter: NVIDIA's
    if nvidia and qtype == Q4_K:
        return (block_m, 64, 4, 4, 2) if block_m == 16 else (block_m, 128, 2, 4, 3)
    if nvidia and qtype == Q6_K and block_m == 32:
        return block_m, 128, 1, 4, 2
    return block_m, 64, 1, 4, 2


def split_for(m: int, n: int, k: int, block_m: int, block_n: int, parts: int,
              device: torch.device) -> int:
    """Shares of K for m rows of x and an [n, k] layer launched with this tile
    (`gguf_gemv.shares_for`)."""
    tiles = triton.cdiv(n, block_n) * triton.cdiv(m, block_m)
    return shares_for(tiles, triton.cdiv(k, 64 * parts), device)


def reserve_split_k(device: torch.device, n: int, k: int, qtype: int) -> None:
    """Sizes the shared split-K scratch for an [n, k] `qtype` layer and every row count this
    kernel takes, before any launch (CUDA-graph capture must not allocate it): one growth, to
    the largest."""
    partials = counts = 0
    for m in range(2, MAX_ROWS + 1):
        block_m, block_n, parts, _, _ = tile_for(qtype, m, device)
        splits = split_for(m, n, k, block_m, block_n, parts, device)
        if splits > 1:
            partials = max(partials, splits * m * n)
            counts = max(counts, triton.cdiv(n, block_n) * triton.cdiv(m, block_m))
    if partials:
        split_k_scratch(device, partials, counts)


def gguf_q8_matmul(x: torch.Tensor, raw: torch.Tensor, qtype: int,
                   block_n: int | None = None, parts: int | None = None,
                   num_warps: int | None = None, num_stages: int | None = None,
                   splits: int | None = None, *, x_q8: Q8 | None = None) -> torch.Tensor:
    """x [M, K] (M <= MAX_ROWS) @ W^T -> [M, N] in x's dtype, W = raw's N rows of K `qtype`
    values (uint8 [N, row bytes], gguf.SUPPORTED_TYPES), x quantized to int8 first (or
    `x_q8`, x already quantized: quantize.py); K in `splits` shares summed in order by the
    last program of each tile. Unset tiles come from `tile_for` / `split_for`."""
    check_tensor("x", x, ndim=2, dtypes=FLOAT_DTYPES)
    check_last_dim_contiguous("x", x)
    (m, k), n = x.shape, raw.shape[0]
    if m > MAX_ROWS:
        raise ValueError(f"gguf_q8_matmul takes at most {MAX_ROWS} rows of x; got {m}")
    if not int8_dots(x.device):
        raise ValueError(f"gguf_q8_matmul needs int8 dots: NVIDIA sm_80 or newer, or AMD; "
                         f"this GPU is {gpu_arch(x.device)} (gguf_matmul serves it)")
    block_bytes = check_raw(raw, qtype, k)
    check_same_device(x=x, raw=raw)
    y = empty((m, n), x.dtype, x.device)
    if m == 0 or n == 0:
        return y
    xq, xd, xs = quantize_q8(x) if x_q8 is None else check_q8(x_q8, m, k, x.device)
    block_m, tile_n, tile_parts, warps, stages = tile_for(qtype, m, x.device)
    block_n, parts = block_n or tile_n, parts or tile_parts
    grid = (triton.cdiv(n, block_n), triton.cdiv(m, block_m))
    splits = splits or split_for(m, n, k, block_m, block_n, parts, x.device)
    partials, arrived = split_k_scratch(x.device, splits * m * n, grid[0] * grid[1]) \
        if splits > 1 else (y, y)
    _gguf_q8_kernel[(*grid, splits)](
        xq, xd, xs, raw, y, partials, arrived, m, n, k, raw.shape[1], QTYPE=int(qtype),
        BYTES=block_bytes, BLOCK_M=block_m, BLOCK_N=block_n, PARTS=parts,
        EVEN=k % (64 * parts) == 0, SPLIT_K=splits > 1, num_warps=num_warps or warps,
        num_stages=num_stages or stages, **pdl_launch(x.device))
    return y
