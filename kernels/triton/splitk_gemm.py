"""Split-K matmul for decode batches of 17 to 256 rows: y[M, N] = x[M, K] @ W[N, K]^T (+ bias).

The gemv's sibling (gemv.py serves M <= 16). At these M a linear layer is still close to
weight-bandwidth bound, but cuBLAS tiles o_proj (4096 x 4096) and down (4096 x 14336) into too
few output tiles for an H100's 132 SMs and reaches 47-70% of the weight-streaming floor
(benchmarks/gemm_shapes.py). To read each weight byte once and keep the re-reads of x (from L2)
few, a program must own many output columns for all M rows; that leaves few column tiles, so
the K dimension is split across programs to fill the SMs: grid (N / BLOCK_N, SPLIT_K).

"Swap AB": each program accumulates acc[BLOCK_N, BLOCK_M] = W_tile @ x_tile^T, so the weight
rows sit on the MMA's M side (Hopper's wgmma needs 64 there) and the few token rows on its N
side; the tile is stored transposed. With SPLIT_K > 1 every program stores its fp32 partial in
a workspace and bumps its column tile's counter; the last to arrive sums the partials in split
order 0..SPLIT_K-1 (bitwise the same whatever the arrival order), adds the bias, writes y and
zeroes the counter for the next launch (so a CUDA graph may replay it): one kernel, no memset.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from localserve.kernels.triton._common import (
    FLOAT_DTYPES,
    cdiv,
    check_last_dim_contiguous,
    check_same_device,
    check_tensor,
    empty,
    gpu_arch,
    next_pow2,
    num_sms,
    nvidia_capability,
    rdna,
    shared_memory_limit,
)

MAX_ROWS = 256  # one tile of rows for all of them; wider batches are GEMMs for cuBLAS
MIN_BLOCK_M = 16  # the smallest N side of an MMA
MAX_WORKSPACE_BYTES = 16 << 20  # fp32 partials of all splits; SPLIT_K is lowered to fit
MIN_K_TILES_PER_SPLIT = 4  # fewer and the pipeline barely fills before a split ends


@dataclass(frozen=True)
class SplitKConfig:
    block_n: int = 128
    block_k: int = 128
    split_k: int = 1  # an upper bound: the wrapper lowers it to what K and the workspace allow
    num_warps: int = 8
    num_stages: int = 4

    def __post_init__(self) -> None:  # tl.arange takes powers of two, tl.dot 16 and more
        if any(b < 16 or b & (b - 1) for b in (self.block_n, self.block_k)) or self.split_k < 1:
            raise ValueError(f"blocks must be powers of two >= 16 and split_k >= 1: {self}")


def default_config(x: torch.Tensor, weight: torch.Tensor) -> SplitKConfig:
    """The tiles and split for this matmul on x's GPU (see `_config_for`)."""
    (m, k), n = x.shape, weight.shape[0]
    return _config_for(m, n, k, x.dtype, gpu_arch(x.device), num_sms(x.device),
                       shared_memory_limit(x.device))


@functools.cache  # eager decode calls it per layer per step
def _config_for(m: int, n: int, k: int, dtype: torch.dtype, arch: str | None, sms: int,
                shared_bytes: int) -> SplitKConfig:
    """128 weight rows a program (x is re-read once per column tile); K tiles 128 wide, 64
    past 64 rows (x's share of a stage grows); 8 warps once the accumulator passes 64 registers
    a thread at 4. 64 x 32 tiles where the dot holds them in registers and spills larger ones:
    fp32 (exact FMA loops), rows not 16-byte aligned (no asynchronous copies), Turing, RDNA;
    64 weight rows for 256 rows on mma.sync GPUs. Up to 4 stages of [BLOCK_N + BLOCK_M,
    BLOCK_K] as shared memory holds (Hopper buffers every stage). The split that fills the
    SMs' slots best over its waves, the fewest among equals: at most two programs a SM, at
    least MIN_K_TILES_PER_SPLIT tiles a split, partials within MAX_WORKSPACE_BYTES."""
    block_m = max(MIN_BLOCK_M, next_pow2(m))
    capability = nvidia_capability(arch)
    if (dtype == torch.float32 or k * dtype.itemsize % 16 or rdna(arch)
            or (capability is not None and capability < (8, 0))):
        block_n, block_k = 64, 32
    else:
        wgmma = capability is None or capability[0] == 9
        block_n = 128 if wgmma or block_m < 256 else 64
        block_k = 128 if block_m <= 64 else 64
    num_warps = 8 if block_n * block_m // (4 * 32) > 64 else 4
    stage_bytes = (block_n + block_m) * block_k * dtype.itemsize
    num_stages = max(1, min(4, shared_bytes // stage_bytes))
    col_tiles = cdiv(n, block_n)
    max_split = max(1, min(cdiv(k, block_k) // MIN_K_TILES_PER_SPLIT, 2 * sms // col_tiles,
                           MAX_WORKSPACE_BYTES // (4 * m * n)))

    def busy(split: int) -> float:  # share of the SM slots of its waves the launch fills
        programs = col_tiles * split
        return round(programs / (cdiv(programs, sms) * sms), 2)

    split_k = max(range(1, max_split + 1), key=lambda s: (busy(s), -s))
    return SplitKConfig(block_n=block_n, block_k=block_k, split_k=split_k, num_warps=num_warps,
                        num_stages=num_stages)


def _num_splits(m: int, n: int, k: int, cfg: SplitKConfig) -> int:
    """The config's split, lowered so the workspace fits MAX_WORKSPACE_BYTES and no split is
    empty (split ranges are whole K tiles: 5 tiles in 4 splits would be 2, 2, 1 and 0)."""
    split = min(cfg.split_k, max(1, MAX_WORKSPACE_BYTES // (4 * m * n)))
    k_tiles = cdiv(k, cfg.block_k)
    return cdiv(k_tiles, cdiv(k_tiles, split))


# Per device: the fp32 workspace of the partials and the int32 counters of the column tiles
# (zero between launches). Launches on one device share them, so they must not overlap: one
# stream at a time. Buffers outgrown stay in _RETIRED, never freed: a captured CUDA graph
# replays their addresses (a few grow steps at most, the workspace <= MAX_WORKSPACE_BYTES).
_BUFFERS: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
_RETIRED: list[torch.Tensor] = []


def _buffers(device: torch.device, workspace_numel: int,
             num_counters: int) -> tuple[torch.Tensor, torch.Tensor]:
    old = _BUFFERS.get(device)
    if old and old[0].numel() >= workspace_numel and old[1].numel() >= num_counters:
        return old
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise RuntimeError("splitk_gemm needs a larger workspace while a CUDA graph is being "
                           "captured: call it once with the largest shape before capture")
    if old:
        _RETIRED.extend(old)
        workspace_numel = max(workspace_numel, old[0].numel())
        num_counters = max(num_counters, old[1].numel())
    _BUFFERS[device] = (empty((workspace_numel,), torch.float32, device),
                        torch.zeros(num_counters, dtype=torch.int32, device=device))
    return _BUFFERS[device]


@triton.jit
def _load_tile(rows, k, row_ok, K, EVEN_K: tl.constexpr):
    """[rows, BLOCK_K] elements at columns k of the row pointers `rows` (0 outside)."""
    if EVEN_K:
        return tl.load(rows + k[None, :], mask=row_ok[:, None], other=0.0)
    return tl.load(rows + k[None, :], mask=row_ok[:, None] & (k < K)[None, :], other=0.0)


@triton.jit
def _store_output(y_ptr, b_ptr, acc, offs_n, offs_m, n_ok, out_mask, stride_ym,
                  HAS_BIAS: tl.constexpr):
    """acc [BLOCK_N, BLOCK_M] (+ bias) into y[m, n], transposed and in y's dtype."""
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[:, None]
    tl.store(y_ptr + offs_m.to(tl.int64)[None, :] * stride_ym + offs_n[:, None],
             acc.to(y_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _sum_partials(y_ptr, b_ptr, ws_ptr, M, N, offs_n, n_ok, stride_ym, HAS_BIAS: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_K: tl.constexpr):
    """y[:, offs_n] = the SPLIT_K partials of the workspace summed in split order (the same
    bits whatever order they arrived in) + bias. At most 64 rows at a time: the sum and the
    partial added to it would take all 255 registers of 8 warps at [128, 256], and spill."""
    REDUCE_M: tl.constexpr = BLOCK_M if BLOCK_M < 64 else 64
    for m0 in tl.static_range(0, BLOCK_M, REDUCE_M):
        offs_m = m0 + tl.arange(0, REDUCE_M)
        mask = n_ok[:, None] & (offs_m < M)[None, :]
        tile = offs_m.to(tl.int64)[None, :] * N + offs_n[:, None]  # [BLOCK_N, REDUCE_M]
        total = tl.zeros([BLOCK_N, REDUCE_M], dtype=tl.float32)
        for s in range(SPLIT_K):
            total += tl.load(ws_ptr + s * M * N + tile, mask=mask, other=0.0,
                             cache_modifier=".cg")  # from L2: other SMs wrote them
        _store_output(y_ptr, b_ptr, total, offs_n, offs_m, n_ok, mask, stride_ym, HAS_BIAS)


# M is not specialised (BLOCK_M already is): batches of 32 and 33 rows share a variant.
@triton.jit(do_not_specialize=["M"])
def _splitk_gemm_kernel(
    y_ptr,              # [M, N], row stride stride_ym
    x_ptr,              # [M, K], row stride stride_xm
    w_ptr,              # [N, K], row stride stride_wn
    b_ptr,              # [N] (HAS_BIAS)
    ws_ptr,             # [SPLIT_K, M, N] fp32 partials (SPLIT_K > 1)
    counters_ptr,       # [cdiv(N, BLOCK_N)] int32, zero at launch and left zero
    M, N, K,
    stride_ym, stride_xm, stride_wn,
    HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    n_ok = offs_n < N
    m_ok = offs_m < M
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn      # [BLOCK_N, 1]
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm      # [BLOCK_M, 1]
    # Whole K tiles a split: only K's last tile can be partial. An empty range (more splits
    # than tiles; the wrapper avoids it) leaves zeros, which sum correctly.
    k_per_split = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K) * BLOCK_K
    k_lo = pid_k * k_per_split
    k_end = tl.minimum(k_lo + k_per_split, K)
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for k0 in range(k_lo, k_end, BLOCK_K):
        k = k0 + offs_k
        w = _load_tile(w_rows, k, n_ok, K, EVEN_K)
        x = _load_tile(x_rows, k, m_ok, K, EVEN_K)
        acc = tl.dot(w, tl.trans(x), acc, input_precision=DOT_PRECISION)
    out_mask = n_ok[:, None] & m_ok[None, :]
    if SPLIT_K == 1:
        _store_output(y_ptr, b_ptr, acc, offs_n, offs_m, n_ok, out_mask, stride_ym, HAS_BIAS)
    else:
        # Partial pid_k into the workspace: ws[s, m, n] at (s * M + m) * N + n.
        tile = offs_m.to(tl.int64)[None, :] * N + offs_n[:, None]  # [BLOCK_N, BLOCK_M]
        tl.store(ws_ptr + pid_k.to(tl.int64) * M * N + tile, acc, mask=out_mask)
        # Every thread's partial stored before the (one-thread) counter update releases them;
        # the acq_rel add then makes the other programs' partials visible to the last one.
        tl.debug_barrier()
        if tl.atomic_add(counters_ptr + pid_n, 1) == SPLIT_K - 1:
            tl.store(counters_ptr + pid_n, 0)  # every split has arrived: no one else adds
            _sum_partials(y_ptr, b_ptr, ws_ptr, M, N, offs_n, n_ok, stride_ym, HAS_BIAS,
                          BLOCK_M, BLOCK_N, SPLIT_K)


def splitk_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                config: SplitKConfig | None = None) -> torch.Tensor:
    """x [M, K] @ weight[N, K]^T (+ bias [N]) -> [M, N] in x's dtype, fp32 accumulation.

    M <= 256 (decode batches past the gemv's 16 rows); x and weight of one float dtype and
    contiguous in K; any row strides. Same contract as F.linear for 2-D x. Deterministic:
    the same inputs give the same bits whatever order the splits finish in. Launches on one
    device must not run concurrently (they share a workspace); the first call with the largest
    shape must come before any CUDA graph capture.
    """
    check_tensor("x", x, ndim=2, dtypes=FLOAT_DTYPES)
    check_tensor("weight", weight, ndim=2, dtypes=(x.dtype,))
    tensors = {"x": x, "weight": weight}
    if bias is not None:
        check_tensor("bias", bias, ndim=1, dtypes=FLOAT_DTYPES)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias has {bias.shape[0]} entries for {weight.shape[0]} outputs")
        tensors["bias"] = bias
    check_same_device(**tensors)
    check_last_dim_contiguous("x", x)
    check_last_dim_contiguous("weight", weight)
    (m, k), n = x.shape, weight.shape[0]
    if weight.shape[1] != k:
        raise ValueError(f"x has {k} features, weight {tuple(weight.shape)} expects "
                         f"{weight.shape[1]}")
    if m > MAX_ROWS:
        raise ValueError(f"splitk_gemm takes at most {MAX_ROWS} rows, got {m}: use a GEMM")
    y = empty((m, n), x.dtype, x.device)
    if m == 0 or n == 0:
        return y
    if k == 0:
        return y.zero_() if bias is None else y.copy_(bias.expand(m, n))
    cfg = config or default_config(x, weight)
    split = _num_splits(m, n, k, cfg)
    col_tiles = triton.cdiv(n, cfg.block_n)
    workspace, counters = _buffers(x.device, split * m * n, col_tiles) if split > 1 else (y, y)
    # No programmatic dependent launch (launch_pdl): consecutive launches share the workspace
    # and counters, so one must not start before the previous one has finished.
    _splitk_gemm_kernel[(col_tiles, split)](
        y, x, weight, bias if bias is not None else y, workspace, counters, m, n, k,
        y.stride(0), x.stride(0), weight.stride(0),
        HAS_BIAS=bias is not None, BLOCK_M=max(MIN_BLOCK_M, next_pow2(m)),
        BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, SPLIT_K=split, EVEN_K=k % cfg.block_k == 0,
        # fp32 inputs: exact products (no TF32), as F.linear computes them.
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else None,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return y

