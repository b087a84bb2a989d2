"""The one-row GGUF matmul: y = x @ W^T for x [1, K] and W in llama.cpp's blocks.

Batch-1 decode streams every weight once a token, so a Q4_K layer could run ~3.5x faster than
its bf16 copy. `gguf.gguf_matmul` feeds `tl.dot` and is bound by its dequantization (4-19% of
an H100's copy bandwidth, session 20). One row needs no `tl.dot` (as in vector_gemv.py): each
program owns BLOCK_N rows of W and walks K UNITS super-blocks (or 8 UNITS 32-value blocks) a
step. What keeps the instruction count down:
- Codes are read as 32-bit words and unpacked with word-wide masks and shifts (four nibbles,
  or six-bit codes, an operation). Q4_K/Q5_K blocks are 16-byte aligned: whole-word (and
  16-byte) loads; the others (Q6_K's 210-byte blocks; the 32-value types, whose codes start
  2 bytes into a block) read a word as two 16-bit halves.
- A code byte becomes a float as `bits(0x4B000000 | code) - (2^23 + offset)`: exact, one
  `prmt` and one add on NVIDIA (int-to-float conversions run at a fraction of the FMA rate);
  the type's offset (-8, -16, -32, -128) folds into the subtraction.
- Products are summed per scale group before the group's scale multiplies them; Q4_K/Q5_K's
  minimums multiply the group's sum of x once.
- Rows past N repeat row N - 1 (only the store is masked), and with K a multiple of a step no
  load is masked.
- Layers of few rows split K in shares (`split_for`): each share's sums go to a scratch, and
  the last program of a row block to arrive adds them in share order (the same bits whatever
  the order of arrival) and resets its arrival count for the next launch
  (`store_sum_of_shares`, which gguf_q8.py shares).
On an H100 (session 21, docs/benchmarks.md) it runs 2.0-4.4x faster than `gguf_matmul` at
one row and 1.07-1.34x faster than the bf16 vector gemv on Q4_K, Q5_K and Q6_K layers (Q8_0:
0.70-0.84x), yet reaches only 18-42% of the copy bandwidth: more programs (8 rows each, or K
split in shares) won nearly every shape, so it is bound by the memory traffic it keeps in
flight, not by its instructions (5-7 a value). Values equal ggml's fp32 dequantization up to
the order of fp32 operations; the reference is `localserve.quant.gguf.dequantize`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from gguf import GGMLQuantizationType as Q

from localserve.kernels.triton._common import (
    FLOAT_DTYPES,
    _device_index,
    check_last_dim_contiguous,
    check_same_device,
    check_tensor,
    empty,
    gpu_arch,
    num_sms,
    nvidia_capability,
    pdl_launch,
    pdl_wait,
    rdna,
)
from localserve.kernels.triton.gguf import (
    Q4_0,
    Q4_K,
    Q5_0,
    Q5_K,
    Q6_K,
    Q8_0,
    check_raw,
)

MAGIC = tl.constexpr(0x4B000000)  # fp32 bits of 2^23: OR-ing in a code c < 2^23 gives 2^23 + c
LOW_NIBBLES = tl.constexpr(0x0F0F0F0F)


@triton.jit
def _ld(ptr, ok, EVEN: tl.constexpr):
    """tl.load, masked (zeros) unless EVEN: every address is in bounds."""
    if EVEN:  # noqa: SIM108 (a constexpr branch)
        value = tl.load(ptr)
    else:
        value = tl.load(ptr, mask=ok, other=0)
    return value


@triton.jit
def _bytes_f32(word, OFFSET: tl.constexpr, USE_PRMT: tl.constexpr):
    """The four bytes of int32 words (codes 0-255), each minus OFFSET, as four fp32 tensors:
    byte k becomes the float with bits 0x4B0000kk (2^23 + code), then one subtraction."""
    if USE_PRMT:  # NVIDIA: one byte permute builds those bits
        b0, b1, b2, b3 = tl.inline_asm_elementwise(
            asm="""{
            .reg .b32 m;
            mov.b32 m, 0x4B000000;
            prmt.b32 $0, $4, m, 0x7540;
            prmt.b32 $1, $4, m, 0x7541;
            prmt.b32 $2, $4, m, 0x7542;
            prmt.b32 $3, $4, m, 0x7543;
            }""",
            constraints="=r,=r,=r,=r,r", args=[word],
            dtype=(tl.int32, tl.int32, tl.int32, tl.int32), is_pure=True, pack=1)
    else:
        b0 = (word & 255) | MAGIC
        b1 = ((word >> 8) & 255) | MAGIC
        b2 = ((word >> 16) & 255) | MAGIC
        b3 = ((word >> 24) & 255) | MAGIC
    base: tl.constexpr = 8388608.0 + OFFSET
    return (b0.to(tl.float32, bitcast=True) - base, b1.to(tl.float32, bitcast=True) - base,
            b2.to(tl.float32, bitcast=True) - base, b3.to(tl.float32, bitcast=True) - base)


@triton.jit
def _x(x_ptr, idx, ok, EVEN: tl.constexpr):
    return _ld(x_ptr + idx, ok, EVEN).to(tl.float32)


@triton.jit
def _dot4(word, x_ptr, xi, ok, OFFSET: tl.constexpr, USE_PRMT: tl.constexpr,
          EVEN: tl.constexpr):
    """(sum over k of (byte k of word - OFFSET) * x[xi + k], sum over k of x[xi + k])."""
    c0, c1, c2, c3 = _bytes_f32(word, OFFSET, USE_PRMT)
    x0 = _x(x_ptr, xi, ok, EVEN)
    x1 = _x(x_ptr, xi + 1, ok, EVEN)
    x2 = _x(x_ptr, xi + 2, ok, EVEN)
    x3 = _x(x_ptr, xi + 3, ok, EVEN)
    return c0 * x0 + c1 * x1 + c2 * x2 + c3 * x3, x0 + x1 + x2 + x3


@triton.jit
def _word(w_ptr, base, wo, ok, EVEN: tl.constexpr):
    """The int32 words `wo` words after byte addresses `base` (multiples of 2: two 16-bit
    loads a word)."""
    p = (w_ptr + base + 4 * wo).to(tl.pointer_type(tl.uint16))
    return _ld(p, ok, EVEN).to(tl.int32) | (_ld(p + 1, ok, EVEN).to(tl.int32) << 16)


@triton.jit
def _fp16(ptr, ok, EVEN: tl.constexpr):
    """The fp16 at 2-byte-aligned byte addresses (every GGUF block's scales), as fp32."""
    return _ld(ptr.to(tl.pointer_type(tl.float16)), ok, EVEN).to(tl.float32)


@triton.jit
def _u8(ptr, ok, EVEN: tl.constexpr):
    return _ld(ptr, ok, EVEN).to(tl.int32)


@triton.jit
def _group_sums(p, BLOCK_N: tl.constexpr, G: tl.constexpr, S: tl.constexpr):
    """[BLOCK_N, G * S] -> the sums of each run of S: [BLOCK_N, G]."""
    return tl.sum(tl.reshape(p, [BLOCK_N, G, S]), axis=2)


@triton.jit
def _k4_scale(head, j, ok, EVEN: tl.constexpr):
    """Q4_K/Q5_K: sub-block j's 6-bit scale, from the 12 bytes after d and dmin."""
    return _k4_scale_of(_u8(head + 4 + (j & 3), ok, EVEN), _u8(head + 12 + (j & 3), ok, EVEN), j)


@triton.jit
def _k4_min(head, j, ok, EVEN: tl.constexpr):
    """Q4_K/Q5_K: sub-block j's 6-bit minimum."""
    return _k4_min_of(_u8(head + 8 + (j & 3), ok, EVEN), _u8(head + 12 + (j & 3), ok, EVEN), j)


@triton.jit
def _k4_scale_of(low, top, j):
    """Sub-block j's scale (fp32) from scale bytes j & 3 (`low`) and 8 + (j & 3) (`top`)."""
    return tl.where(j < 4, low & 63, (top & 15) | ((low >> 6) << 4)).to(tl.float32)


@triton.jit
def _k4_min_of(high, top, j):
    """Sub-block j's minimum (fp32) from scale bytes 4 + (j & 3) (`high`) and 8 + (j & 3)."""
    return tl.where(j < 4, high & 63, (top >> 4) | ((high >> 6) << 4)).to(tl.float32)


@triton.jit
def _step_k4(w_ptr, x_ptr, row_start, v0, K, QTYPE: tl.constexpr, BYTES: tl.constexpr,
             UNITS: tl.constexpr, BLOCK_N: tl.constexpr, USE_PRMT: tl.constexpr,
             EVEN: tl.constexpr):
    """Q4_K/Q5_K: UNITS super-blocks from value v0 as [BLOCK_N, 4 UNITS] sums, one a quarter
    super-block: 64 values in 8 words, byte i holding value i in its low nibble and 32 + i
    in its high one. The blocks are 16-byte aligned."""
    G: tl.constexpr = 4 * UNITS
    g2 = tl.arange(0, G)[None, :]
    unit2 = v0 // 256 + g2 // 4
    ok2 = unit2 * 256 < K
    head = w_ptr + row_start[:, None] + unit2 * BYTES                       # [BLOCK_N, G]
    sub = 2 * (g2 % 4)
    j = tl.arange(0, 8 * G)                                                 # word of the step
    unit = (v0 // 256 + j // 32)[None, :]
    quarter = ((j // 8) % 4)[None, :]
    ok = unit * 256 < K
    QS: tl.constexpr = 48 if QTYPE == Q5_K else 16
    row_words = (row_start // 4)[:, None]
    w32 = w_ptr.to(tl.pointer_type(tl.int32))
    codes = _ld(w32 + row_words + unit * (BYTES // 4) + QS // 4 + (j % 32)[None, :], ok, EVEN)
    lo = codes & LOW_NIBBLES
    hi = (codes >> 4) & LOW_NIBBLES
    if QTYPE == Q5_K:  # a fifth bit per value: bit 2q (low) or 2q + 1 (high) of qh byte i
        highs = _ld(w32 + row_words + unit * (BYTES // 4) + 4 + (j % 8)[None, :], ok,
                    EVEN) >> (2 * quarter)
        lo = lo | ((highs & 0x01010101) << 4)
        hi = hi | (((highs >> 1) & 0x01010101) << 4)
    xi = (v0 + 64 * (j // 8) + 4 * (j % 8))[None, :]
    s_lo, x_lo = _dot4(lo, x_ptr, xi, ok, 0, USE_PRMT, EVEN)
    s_hi, x_hi = _dot4(hi, x_ptr, xi + 32, ok, 0, USE_PRMT, EVEN)
    s_lo = _group_sums(s_lo, BLOCK_N, G, 8)
    s_hi = _group_sums(s_hi, BLOCK_N, G, 8)
    x_lo = _group_sums(x_lo, 1, G, 8)
    x_hi = _group_sums(x_hi, 1, G, 8)
    d = _fp16(head, ok2, EVEN)
    dmin = _fp16(head + 2, ok2, EVEN)
    return (d * (s_lo * _k4_scale(head, sub, ok2, EVEN)
                 + s_hi * _k4_scale(head, sub + 1, ok2, EVEN))
            - dmin * (x_lo * _k4_min(head, sub, ok2, EVEN)
                      + x_hi * _k4_min(head, sub + 1, ok2, EVEN)))


@triton.jit
def _step_q6_k(w_ptr, x_ptr, row_start, v0, K, BYTES: tl.constexpr, UNITS: tl.constexpr,
               USE_PRMT: tl.constexpr, EVEN: tl.constexpr):
    """Q6_K: UNITS super-blocks as [BLOCK_N, 8 UNITS] sums, one per 16 bytes of ql (group g):
    their low nibbles are values 16 (g + 4 (g // 4)) + i, with scale g + 4 (g // 4); their
    high nibbles the values (and scale) 64 (4) further on; the two high bits of each come
    from qh byte 16 (2 (g // 4) + g % 2) + i, shifted by 2 ((g // 2) % 2), +4 for the high
    nibbles."""
    G: tl.constexpr = 8 * UNITS
    g2 = tl.arange(0, G)[None, :]
    unit2 = v0 // 256 + g2 // 8
    grp2 = g2 % 8
    ok2 = unit2 * 256 < K
    block = row_start[:, None] + unit2 * BYTES                              # byte offsets
    head = w_ptr + block
    scale = grp2 + 4 * (grp2 // 4)
    wd = tl.arange(0, 4)[None, None, :]                                     # word of a group
    grp = grp2[:, :, None]
    ok = ok2[:, :, None]
    ql = _word(w_ptr, block[:, :, None], 4 * grp + wd, ok, EVEN)           # [BLOCK_N, G, 4]
    qh = _word(w_ptr, block[:, :, None], 32 + 4 * (2 * (grp // 4) + grp % 2) + wd, ok,
               EVEN) >> (2 * ((grp // 2) % 2))
    lo = (ql & LOW_NIBBLES) | ((qh & 0x03030303) << 4)
    hi = ((ql >> 4) & LOW_NIBBLES) | (((qh >> 4) & 0x03030303) << 4)
    xi = (v0 + 256 * (g2 // 8) + 16 * scale)[:, :, None] + 4 * wd
    p_lo, _ = _dot4(lo, x_ptr, xi, ok, 32, USE_PRMT, EVEN)
    p_hi, _ = _dot4(hi, x_ptr, xi + 64, ok, 32, USE_PRMT, EVEN)
    d = _fp16(head + 208, ok2, EVEN)
    d_lo = d * _ld(head + 192 + scale, ok2, EVEN).to(tl.int8, bitcast=True)
    d_hi = d * _ld(head + 196 + scale, ok2, EVEN).to(tl.int8, bitcast=True)
    return d_lo * tl.sum(p_lo, axis=2) + d_hi * tl.sum(p_hi, axis=2)


@triton.jit
def _spread4(bits):
    """Bits 0-3 of `bits` as bit 4 of bytes 0-3."""
    return (((bits & 1) << 4) | ((bits & 2) << 11) | ((bits & 4) << 18)
            | ((bits & 8) << 25))


@triton.jit
def _step_block32(w_ptr, x_ptr, row_start, v0, K, QTYPE: tl.constexpr, BYTES: tl.constexpr,
                  UNITS: tl.constexpr, BLOCK_N: tl.constexpr, USE_PRMT: tl.constexpr,
                  EVEN: tl.constexpr):
    """Q4_0 / Q5_0 / Q8_0: 8 UNITS blocks of 32 values from value v0 (past K: zeros), as
    [BLOCK_N, 8 UNITS] sums."""
    G: tl.constexpr = 8 * UNITS
    b2 = v0 // 32 + tl.arange(0, G)[None, :]
    ok2 = b2 * 32 < K
    d = _fp16(w_ptr + row_start[:, None] + b2 * BYTES, ok2, EVEN)
    if QTYPE == Q8_0:  # d, 32 int8: 8 words a block, read as codes + 128
        j = tl.arange(0, 8 * G)
        b = (v0 // 32 + j // 8)[None, :]
        ok = b * 32 < K
        word = _word(w_ptr, row_start[:, None] + b * BYTES + 2, (j % 8)[None, :], ok, EVEN)
        # -2139062144 is 0x80808080: flips each byte's sign bit (int8 -> code + 128)
        p, _ = _dot4(word ^ (-2139062144), x_ptr, 32 * b + 4 * (j % 8)[None, :], ok, 128,
                     USE_PRMT, EVEN)
        sums = _group_sums(p, BLOCK_N, G, 8)
    else:  # Q4_0 / Q5_0: 16 bytes a block, value i in byte i's low nibble, 16 + i in its high
        j = tl.arange(0, 4 * G)
        b = (v0 // 32 + j // 4)[None, :]
        ok = b * 32 < K
        block = row_start[:, None] + b * BYTES
        QS: tl.constexpr = 2 if QTYPE == Q4_0 else 6
        word = _word(w_ptr, block + QS, (j % 4)[None, :], ok, EVEN)
        lo = word & LOW_NIBBLES
        hi = (word >> 4) & LOW_NIBBLES
        if QTYPE == Q5_0:  # 32 high bits after d: value i's is bit i
            bits = _word(w_ptr, block + 2, 0, ok, EVEN) >> (4 * (j % 4))[None, :]
            lo = lo | _spread4(bits)
            hi = hi | _spread4(bits >> 16)
            OFFSET: tl.constexpr = 16
        else:
            OFFSET: tl.constexpr = 8
        xi = 32 * b + 4 * (j % 4)[None, :]
        p_lo, _ = _dot4(lo, x_ptr, xi, ok, OFFSET, USE_PRMT, EVEN)
        p_hi, _ = _dot4(hi, x_ptr, xi + 16, ok, OFFSET, USE_PRMT, EVEN)
        sums = _group_sums(p_lo + p_hi, BLOCK_N, G, 4)
    return d * sums


@triton.jit
def share_of_k(steps, SPLIT_K: tl.constexpr, AXIS: tl.constexpr):
    """(first, end): the K-steps of this program, a contiguous share of `steps` when K is
    split over grid axis AXIS, else all of them."""
    if SPLIT_K:
        share = tl.cdiv(steps, tl.num_programs(AXIS))
        first = tl.program_id(AXIS) * share
        end = tl.minimum(first + share, steps)
    else:
        first = 0
        end = steps
    return first, end


@triton.jit
def store_sum_of_shares(y, y_ptr, partial_ptr, arrived_ptr, out, stored, size, tile,
                        AXIS: tl.constexpr):
    """Split K: this program's sums `y` (for offsets `out` of y_ptr, mask `stored`) go to its
    share's slice of the scratch (`size` sums a share); the last program of `tile` to
    arrive adds the shares in share order (the same bits whatever the order of arrival),
    stores them and resets the tile's arrival count for the next launch."""
    splits = tl.num_programs(AXIS)
    tl.store(partial_ptr + tl.program_id(AXIS) * size + out, y, mask=stored)
    tl.debug_barrier()  # every thread's sums written before the count is released
    if tl.atomic_add(arrived_ptr + tile, 1, sem="acq_rel") == splits - 1:
        total = tl.zeros_like(y)
        for share in range(0, splits):
            total += tl.load(partial_ptr + share * size + out, mask=stored, other=0.0,
                             cache_modifier=".cg")
        tl.store(y_ptr + out, total.to(y_ptr.dtype.element_ty), mask=stored)
        tl.atomic_xchg(arrived_ptr + tile, 0)


@triton.jit
def _gguf_gemv_kernel(x_ptr, w_ptr, y_ptr, partial_ptr, arrived_ptr, N, K, row_bytes,
                      QTYPE: tl.constexpr, BYTES: tl.constexpr, BLOCK_N: tl.constexpr,
                      UNITS: tl.constexpr, EVEN: tl.constexpr, SPLIT_K: tl.constexpr,
                      USE_PRMT: tl.constexpr, USE_PDL: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_start = tl.minimum(rows, N - 1).to(tl.int64) * row_bytes
    pdl_wait(USE_PDL)
    G: tl.constexpr = 4 * UNITS if (QTYPE == Q4_K or QTYPE == Q5_K) else 8 * UNITS  # noqa: SIM109
    acc = tl.zeros([BLOCK_N, G], tl.float32)
    first, steps = share_of_k(tl.cdiv(K, 256 * UNITS), SPLIT_K, 1)
    for step in range(first, steps):
        v0 = step * (256 * UNITS)
        if QTYPE == Q4_K or QTYPE == Q5_K:  # noqa: SIM109 (jit: no `in` here)
            acc += _step_k4(w_ptr, x_ptr, row_start, v0, K, QTYPE, BYTES, UNITS, BLOCK_N,
                            USE_PRMT, EVEN)
        elif QTYPE == Q6_K:
            acc += _step_q6_k(w_ptr, x_ptr, row_start, v0, K, BYTES, UNITS, USE_PRMT, EVEN)
        else:
            acc += _step_block32(w_ptr, x_ptr, row_start, v0, K, QTYPE, BYTES, UNITS, BLOCK_N,
                                 USE_PRMT, EVEN)
    y = tl.sum(acc, axis=1)
    if SPLIT_K:
        store_sum_of_shares(y, y_ptr, partial_ptr, arrived_ptr, rows, rows < N, N,
                            tl.program_id(0), 1)
    else:
        tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=rows < N)


MAX_SPLITS = 8


def tile_for(qtype: int, n: int, device: torch.device) -> tuple[int, int, int]:
    """(rows a program, super-blocks or 8-block groups a step, warps) for an [n, k] layer:
    the fastest of the H100 sweep (gguf_gpu_bench.py --only gemv, session 21, Llama-3-8B's
    shapes). Q4_K/Q5_K: 32-row programs of 2 warps for wide layers (gate/up), 64-row ones
    with K in 8 shares (`split_for`) for 4096-row ones (o, down), 8 rows otherwise; 8 rows
    everywhere on RDNA3 Radeons, where 64 spill registers (test_triton_compile.py)."""
    if qtype in (Q.Q4_K, Q.Q5_K) and not rdna(gpu_arch(device)):
        return (32, 1, 2) if n >= 16384 else (64, 2, 4) if n <= 4096 else (8, 4, 4)
    return (8, 4, 4) if qtype == Q.Q8_0 else (8, 2, 4)


# Per device: fp32 partial sums of split-K launches and their arrival counts (zeros between
# launches: the last program of a row block resets its count). Launches on one stream take
# turns (a launch waits for the previous one, PDL included), so one scratch serves every layer.
_SCRATCH: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def split_k_scratch(device: torch.device, partials: int, counts: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The device's scratch, grown to hold `partials` sums and `counts` counts (outside
    CUDA-graph capture: `reserve_split_k` sizes it at load)."""
    if device.type == "cuda":  # "cuda" and "cuda:0" name one GPU but compare unequal
        device = torch.device("cuda", _device_index(device))
    have = _SCRATCH.get(device)
    if have is None or have[0].numel() < partials or have[1].numel() < counts:
        partials = max(partials, 0 if have is None else have[0].numel())
        counts = max(counts, 0 if have is None else have[1].numel())
        have = (torch.empty(partials, dtype=torch.float32, device=device),
                torch.zeros(counts, dtype=torch.int32, device=device))
        _SCRATCH[device] = have
    return have


def shares_for(programs: int, steps: int, device: torch.device) -> int:
    """Shares of K: enough programs to give every SM four, when `programs` (one per tile)
    give fewer (these kernels are bound by the memory traffic they keep in flight); at most
    MAX_SPLITS and `steps` (K-steps)."""
    return max(1, min(MAX_SPLITS, steps, 4 * num_sms(device) // programs))


def split_for(n: int, k: int, block_n: int, units: int, device: torch.device) -> int:
    """Shares of K for an [n, k] layer (`shares_for`)."""
    return shares_for(triton.cdiv(n, block_n), triton.cdiv(k, 256 * units), device)


def reserve_split_k(device: torch.device, n: int, k: int, qtype: int) -> None:
    """Sizes the split-K scratch for an [n, k] layer before any launch (graph capture)."""
    block_n, units, _ = tile_for(qtype, n, device)
    splits = split_for(n, k, block_n, units, device)
    if splits > 1:
        split_k_scratch(device, splits * n, triton.cdiv(n, block_n))


def gguf_gemv(x: torch.Tensor, raw: torch.Tensor, qtype: int, block_n: int | None = None,
              units: int | None = None, num_warps: int | None = None,
              splits: int | None = None) -> torch.Tensor:
    """x [1, K] @ W^T -> [1, N] in x's dtype (fp32 accumulation), W = raw's N rows of K
    `qtype` values (uint8 [N, row bytes], gguf.SUPPORTED_TYPES); K in `splits` shares summed
    by the last program of each row block. Unset tiles come from `tile_for`/`split_for`."""
    check_tensor("x", x, ndim=2, dtypes=FLOAT_DTYPES)
    check_last_dim_contiguous("x", x)
    (m, k), n = x.shape, raw.shape[0]
    if m != 1:
        raise ValueError(f"gguf_gemv takes one row of x; got {m} (gguf_matmul takes more)")
    block_bytes = check_raw(raw, qtype, k)
    check_same_device(x=x, raw=raw)
    y = empty((1, n), x.dtype, x.device)
    if n == 0:
        return y
    tile = tile_for(qtype, n, x.device)
    block_n, units, num_warps = block_n or tile[0], units or tile[1], num_warps or tile[2]
    blocks = triton.cdiv(n, block_n)
    splits = splits or split_for(n, k, block_n, units, x.device)
    partials, arrived = split_k_scratch(x.device, splits * n, blocks) if splits > 1 else (y, y)
    _gguf_gemv_kernel[(blocks, splits)](
        x, raw, y, partials, arrived, n, k, raw.shape[1], QTYPE=int(qtype), BYTES=block_bytes,
        BLOCK_N=block_n, UNITS=units, EVEN=k % (256 * units) == 0, SPLIT_K=splits > 1,
        USE_PRMT=nvidia_capability(gpu_arch(x.device)) is not None,
        num_warps=num_warps, **pdl_launch(x.device))
    return y
