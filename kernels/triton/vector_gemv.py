"""The one-row decode matmul: y = x @ W^T (+ bias) for x [1, K], with no `tl.dot`.

At batch-1 decode a linear layer streams its whole weight for one row, so only bandwidth
counts. With one row the products are an element-wise multiply of a weight tile by the input
vector and a sum along K, so there is nothing to pad to tensor-core tiles (the batched gemv,
gemv.py, pads the row to 16). Tiles of 8 output rows by up to 2,048 columns, 8 warps and no
software pipeline won the H100 sweep (`benchmarks/triton_kernels.py --only fused_gemv`,
session 12): each thread keeps eight 16-byte weight loads in flight per tile, and the many
small programs even out the finish. It beat cuBLAS and the batched gemv on every Llama-3-8B
shape; (a) went from 172.0 to 185.0 tok/s (docs/benchmarks.md).

Also here, measured and not used by the engine: `norm_gemv` folds the RMSNorm (+ residual)
before a projection into it (1/rms is a scalar of the row, applied to the finished dot
products; the K loop needs only x * norm_weight) and can apply the gated activation as the
gate/up's epilogue; `act_gemv` folds act-and-mul into the down projection. They save a launch
each, but their per-tile input math cost more: (a) 181.8 / 182.1 tok/s with the norms and the
activation folded, 185.0 / 185.1 without. The gated form also spills on RDNA3 (gfx1100).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

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
from localserve.kernels.triton.activation import ACTIVATIONS, gated


@dataclass(frozen=True)
class VectorGemvConfig:
    """Output rows and K columns a program's weight tile spans; warps; pipeline stages."""

    block_n: int = 8
    block_k: int = 2048
    num_warps: int = 8
    num_stages: int = 1


@functools.cache
def vector_config(n: int, k: int) -> VectorGemvConfig:
    """The tiles for an [n, k] weight, the H100 sweep's fastest (session 12): 8 x 2,048 of
    8 warps without a pipeline on all five Llama-3-8B shapes (within 0.1 us of 8 x 1,024
    of 4 warps on the gate_up); rows of at most 1,024 (Qwen3-0.6B's, Gemma 3 270M's):
    16 x 512 of 8 warps, 2 stages (4.8 us on Qwen3-0.6B's gate_up, 6.0-6.6 for the others)."""
    if k <= 1024:
        return VectorGemvConfig(block_n=16, block_k=512, num_warps=8, num_stages=2)
    return VectorGemvConfig(block_n=8, block_k=2048, num_warps=8, num_stages=1)


_NONE, _NORM, _ACT = 0, 1, 2  # PROLOGUE: how a tile of the input row is computed


@triton.jit
def _input_tile(x_ptr, res_ptr, new_res_ptr, g_ptr, k, k_ok, K, weight_offset, first_program,
                PROLOGUE: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr):
    """(the input row's columns k as fp32 before any 1/rms, their squares' contribution)."""
    x = tl.load(x_ptr + k, mask=k_ok, other=0.0)
    if PROLOGUE == 2:  # act(gate) * up, rounded as the separate act_and_mul kernel rounds it
        up = tl.load(x_ptr + K + k, mask=k_ok, other=0.0)
        xf = gated(x, up, ACTIVATION).to(x.dtype).to(tl.float32)
        return xf, xf  # (the second is unused without the norm)
    if PROLOGUE == 1:
        if HAS_RESIDUAL:  # the sum is rounded to x's dtype, as the RMSNorm kernel does
            x = (x.to(tl.float32) + tl.load(res_ptr + k, mask=k_ok, other=0.0)
                 .to(tl.float32)).to(x.dtype)
            tl.store(new_res_ptr + k, x, mask=k_ok & first_program)
        xf = x.to(tl.float32)
        g = tl.load(g_ptr + k, mask=k_ok, other=0.0).to(tl.float32) + weight_offset
        return xf * g, xf * xf
    xf = x.to(tl.float32)
    return xf, xf


@triton.jit
def _weight_tiles(w_rows, u_rows, k, n_ok, K, GATED: tl.constexpr):
    """(the weight tile at columns k, the up tile (GATED; else the weight tile again), k < K)."""
    k_ok = k < K
    w_ok = n_ok[:, None] & k_ok[None, :]
    w = tl.load(w_rows + k[None, :], mask=w_ok, other=0.0)
    u = w
    if GATED:
        u = tl.load(u_rows + k[None, :], mask=w_ok, other=0.0)
    return w, u, k_ok


@triton.jit
def _accumulate(acc, acc_u, squares, w, u, x_ptr, res_ptr, new_res_ptr, g_ptr, k, k_ok, K,
                weight_offset, first_program, PROLOGUE: tl.constexpr,
                HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr, GATED: tl.constexpr):
    """One K tile: the input's columns k times the weight tile w (and the up tile u)."""
    xf, sq = _input_tile(x_ptr, res_ptr, new_res_ptr, g_ptr, k, k_ok, K, weight_offset,
                         first_program, PROLOGUE, HAS_RESIDUAL, ACTIVATION)
    acc += w.to(tl.float32) * xf[None, :]
    if GATED:
        acc_u += u.to(tl.float32) * xf[None, :]
    if PROLOGUE == 1:
        squares += sq
    return acc, acc_u, squares


@triton.jit
def _vector_gemv_kernel(
    y_ptr,              # [N]
    x_ptr,              # [K] ([2K], gate | up, for PROLOGUE 2)
    res_ptr,            # [K] (HAS_RESIDUAL)
    new_res_ptr,        # [K]: x + residual (HAS_RESIDUAL)
    g_ptr,              # [K] the norm's weight (PROLOGUE 1)
    w_ptr,              # [N, K] ([2N, K], gate rows then up rows, if GATED); row stride stride_wn
    b_ptr,              # [N] (HAS_BIAS)
    N, K, stride_wn, eps, weight_offset,
    PROLOGUE: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    ACTIVATION: tl.constexpr,
    GATED: tl.constexpr,        # y = act(x @ gate^T) * (x @ up^T)
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    n_ok = offs_n < N
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn
    u_rows = w_rows + N * stride_wn  # GATED: the up rows of the same outputs
    first_program = pid == 0
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    squares = tl.zeros([BLOCK_K], dtype=tl.float32)
    # The first weight tile is no kernel's output: it loads before the PDL wait, so the
    # stream starts while the kernel that writes x is finishing.
    w, u, k_ok = _weight_tiles(w_rows, u_rows, offs_k, n_ok, K, GATED)
    pdl_wait(USE_PDL)
    acc, acc_u, squares = _accumulate(
        acc, acc_u, squares, w, u, x_ptr, res_ptr, new_res_ptr, g_ptr, offs_k,
        k_ok, K, weight_offset, first_program, PROLOGUE, HAS_RESIDUAL, ACTIVATION, GATED)
    for k0 in range(BLOCK_K, K, BLOCK_K):
        k = k0 + offs_k
        w, u, k_ok = _weight_tiles(w_rows, u_rows, k, n_ok, K, GATED)
        acc, acc_u, squares = _accumulate(
            acc, acc_u, squares, w, u, x_ptr, res_ptr, new_res_ptr, g_ptr, k,
            k_ok, K, weight_offset, first_program, PROLOGUE, HAS_RESIDUAL, ACTIVATION, GATED)
    y = tl.sum(acc, axis=1)
    if GATED:
        y_u = tl.sum(acc_u, axis=1)
    if PROLOGUE == 1:
        inv_rms = 1.0 / tl.sqrt(tl.sum(squares, axis=0) / K + eps)
        y = y * inv_rms
        if GATED:
            y_u = y_u * inv_rms
    if HAS_BIAS:
        y += tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
    if GATED:
        y = gated(y, y_u, ACTIVATION)
    tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=n_ok)


def _check_weight(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  k: int) -> dict[str, torch.Tensor]:
    check_tensor("weight", weight, ndim=2, dtypes=(x.dtype,))
    check_last_dim_contiguous("weight", weight)
    if weight.shape[1] != k:
        raise ValueError(f"the input row has {k} features, weight {tuple(weight.shape)} "
                         f"expects {weight.shape[1]}")
    tensors = {"x": x, "weight": weight}
    if bias is not None:
        check_tensor("bias", bias, ndim=1, dtypes=FLOAT_DTYPES)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias has {bias.shape[0]} entries for {weight.shape[0]} outputs")
        tensors["bias"] = bias
    return tensors


def _check_row(name: str, x: torch.Tensor) -> None:
    check_tensor(name, x, ndim=2, dtypes=FLOAT_DTYPES)
    if x.shape[0] != 1:
        raise ValueError(f"{name} must be one row [1, features], got shape {tuple(x.shape)}")
    if not x.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def _launch(y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            k: int, config: VectorGemvConfig | None, *, prologue: int,
            residual: torch.Tensor | None = None, new_residual: torch.Tensor | None = None,
            norm_weight: torch.Tensor | None = None, eps: float = 0.0,
            weight_offset: float = 0.0, activation: int = 0, gated: bool = False) -> None:
    n = y.shape[1]
    cfg = config or vector_config(n, k)
    _vector_gemv_kernel[(triton.cdiv(n, cfg.block_n),)](
        y, x, residual if residual is not None else x,
        new_residual if new_residual is not None else y,
        norm_weight if norm_weight is not None else x, weight,
        bias if bias is not None else y, n, k, weight.stride(0), float(eps),
        float(weight_offset),
        PROLOGUE=prologue, HAS_RESIDUAL=residual is not None, ACTIVATION=activation,
        GATED=gated, HAS_BIAS=bias is not None, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **pdl_launch(x.device),
    )


def _activation_id(activation: str) -> int:
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of "
                         f"{sorted(ACTIVATIONS)}")
    return ACTIVATIONS[activation]


def _outputs(weight: torch.Tensor, gated: str | None) -> int:
    """Output columns: the weight's rows, or half of them for a gated [gate; up] weight."""
    if gated is None:
        return weight.shape[0]
    if weight.shape[0] % 2:
        raise ValueError(f"a gated weight stacks gate and up rows: {weight.shape[0]} is odd")
    return weight.shape[0] // 2


def vector_gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                config: VectorGemvConfig | None = None) -> torch.Tensor:
    """x [1, K] @ weight [N, K]^T (+ bias) -> [1, N] in x's dtype, fp32 accumulation."""
    _check_row("x", x)
    k = x.shape[1]
    check_same_device(**_check_weight(x, weight, bias, k))
    y = empty((1, weight.shape[0]), x.dtype, x.device)
    if y.numel() and k:
        _launch(y, x, weight, bias, k, config, prologue=_NONE)
    elif y.numel():
        y.copy_(bias.expand_as(y)) if bias is not None else y.zero_()
    return y


def norm_gemv(x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor,
              eps: float, weight_offset: float, weight: torch.Tensor,
              bias: torch.Tensor | None = None, gated: str | None = None,
              config: VectorGemvConfig | None = None,
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(RMSNorm(x [+ residual]) @ weight^T (+ bias), x + residual | None) for one row.

    The norm is `rms_norm(x, norm_weight, eps, residual, weight_offset)`'s (reference.py),
    except that its output is not rounded to x's dtype before the products. x, residual:
    [1, K] of one float dtype, contiguous; weight [N, K] in x's dtype, contiguous in K.
    gated: an activation ('silu', 'gelu_tanh'): weight is [gate; up] ([2N, K], no bias) and
    the output act(normed @ gate^T) * (normed @ up^T) [1, N] (the gated MLP's first half).
    """
    _check_row("x", x)
    k = x.shape[1]
    tensors = _check_weight(x, weight, bias, k)
    check_tensor("norm_weight", norm_weight, ndim=1, dtypes=FLOAT_DTYPES)
    if norm_weight.shape[0] != k or not norm_weight.is_contiguous():
        raise ValueError(f"norm_weight must be contiguous with {k} elements, got "
                         f"{tuple(norm_weight.shape)}")
    tensors["norm_weight"] = norm_weight
    if residual is not None:
        _check_row("residual", residual)
        if residual.shape != x.shape or residual.dtype != x.dtype:
            raise ValueError(f"residual {tuple(residual.shape)} {residual.dtype} must match "
                             f"x {tuple(x.shape)} {x.dtype}")
        tensors["residual"] = residual
    if gated is not None and bias is not None:
        raise ValueError("a gated projection takes no bias")
    activation = _activation_id(gated) if gated is not None else 0
    check_same_device(**tensors)
    if k == 0:
        raise ValueError("norm_gemv needs at least one feature")
    y = empty((1, _outputs(weight, gated)), x.dtype, x.device)
    new_residual = empty(tuple(x.shape), x.dtype, x.device) if residual is not None else None
    if y.numel():
        _launch(y, x, weight, bias, k, config, prologue=_NORM, residual=residual,
                new_residual=new_residual, norm_weight=norm_weight, eps=eps,
                weight_offset=weight_offset, activation=activation, gated=gated is not None)
    elif new_residual is not None:  # no outputs, but the residual sum is still owed
        new_residual.copy_((x.float() + residual.float()).to(x.dtype))
    return y, new_residual


def act_gemv(gate_up: torch.Tensor, activation: str, weight: torch.Tensor,
             bias: torch.Tensor | None = None, config: VectorGemvConfig | None = None,
             ) -> torch.Tensor:
    """act_and_mul(gate_up, activation) @ weight^T (+ bias) for one row gate_up [1, 2K]."""
    _check_row("gate_up", gate_up)
    act = _activation_id(activation)
    if gate_up.shape[1] % 2:
        raise ValueError(f"gate_up's last dim must be even (gate | up), got "
                         f"{tuple(gate_up.shape)}")
    k = gate_up.shape[1] // 2
    check_same_device(**_check_weight(gate_up, weight, bias, k))
    y = empty((1, weight.shape[0]), gate_up.dtype, gate_up.device)
    if y.numel() and k:
        _launch(y, gate_up, weight, bias, k, config, prologue=_ACT, activation=act)
    elif y.numel():
        y.copy_(bias.expand_as(y)) if bias is not None else y.zero_()
    return y
