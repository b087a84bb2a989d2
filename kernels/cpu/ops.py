"""Torch-facing wrappers of the C kernels: GGUF matmul, quantized embedding, RMSNorm,
gated activations. Each checks dtypes and shapes once, then passes raw pointers to C
(ctypes releases the GIL for the call). Weights are the raw GGUF bytes, never dequantized.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from localserve.kernels.cpu._runtime import check, lib

# ggml type -> (elements per block, bytes per block), for the types the C kernels accept.
BLOCKS: dict[int, tuple[int, int]] = {0: (1, 4), 1: (1, 2), 30: (1, 2), 6: (32, 22), 8: (32, 34),
                                      12: (256, 144), 14: (256, 210), 15: (256, 292)}
MATMUL_TYPES = frozenset({0, 1, 30, 6, 8, 12, 14})  # Q8_K is an activation format only


@dataclass(frozen=True)
class GGUFWeight:
    """A validated raw GGUF weight [out_features, in_features]; holds the buffer alive.

    Prepare once at load time: per-call validation and pointer lookup are then skipped.
    """

    data: object
    ptr: int
    qtype: int
    out_features: int
    in_features: int


def _buffer_ptr(buf: object) -> tuple[int, int]:
    """(address, nbytes) of a C-contiguous numpy array or CPU tensor."""
    if isinstance(buf, torch.Tensor):
        if buf.device.type != "cpu" or not buf.is_contiguous():
            raise ValueError("qweight tensor must be a contiguous CPU tensor")
        return buf.data_ptr(), buf.numel() * buf.element_size()
    if isinstance(buf, np.ndarray):
        if not buf.flags.c_contiguous:
            raise ValueError("qweight array must be C-contiguous")
        return int(buf.__array_interface__["data"][0]), int(buf.nbytes)
    raise TypeError(f"qweight must be a numpy array or torch tensor, got {type(buf).__name__}")


def prepare_weight(qweight: np.ndarray | torch.Tensor, qtype: int,
                   out_features: int) -> GGUFWeight:
    """Checks a raw GGUF tensor ([out, row_bytes] uint8, or typed F32/F16 arrays)."""
    qtype = int(qtype)
    if qtype not in BLOCKS:
        raise ValueError(f"unsupported ggml type {qtype} (supported: {sorted(BLOCKS)})")
    ptr, nbytes = _buffer_ptr(qweight)
    elems, size = BLOCKS[qtype]
    if out_features <= 0 or nbytes % out_features or (nbytes // out_features) % size:
        raise ValueError(f"qweight has {nbytes} bytes: not {out_features} rows of whole "
                         f"{size}-byte blocks of ggml type {qtype}")
    in_features = nbytes // out_features // size * elems
    return GGUFWeight(qweight, ptr, qtype, int(out_features), in_features)


def _f32_input(x: torch.Tensor, name: str) -> torch.Tensor:
    # is_cpu / `is` comparisons: these run per layer per step, x.device builds an object.
    if not isinstance(x, torch.Tensor) or not x.is_cpu:
        raise TypeError(f"{name} must be a CPU torch tensor")
    if x.dtype is not torch.float32:
        raise TypeError(f"{name} must be float32, got {x.dtype}")
    return x if x.is_contiguous() else x.contiguous()


def gguf_matmul(x: torch.Tensor, qweight: GGUFWeight | np.ndarray | torch.Tensor,
                qtype: int | None = None, out_features: int | None = None,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """y[..., out] = x[..., in] @ W^T, W the raw GGUF tensor (gguf.GGMLQuantizationType qtype).

    Quantized types quantize x on the fly (Q8_0 blocks for Q5_0/Q8_0, Q8_K for Q4_K/Q6_K)
    and use integer dot products; F32/F16/BF16 weights use fp32 FMA.
    """
    w = qweight if type(qweight) is GGUFWeight else prepare_weight(
        qweight, _required(qtype, "qtype"), _required(out_features, "out_features"))
    if w.qtype not in MATMUL_TYPES:
        raise ValueError(f"ggml type {w.qtype} is not a matmul weight type")
    x = _f32_input(x, "x")
    if x.dim() == 0 or x.shape[-1] != w.in_features:
        raise ValueError(f"x {tuple(x.shape)} does not end in in_features={w.in_features}")
    shape = (*x.shape[:-1], w.out_features)
    if out is None:
        out = torch.empty(shape, dtype=torch.float32)
    elif out.shape != shape or out.dtype is not torch.float32 or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous float32 tensor of shape {shape}")
    tokens = x.numel() // w.in_features
    check(lib().ls_gguf_matmul(x.data_ptr(), tokens, w.in_features, w.ptr, w.qtype,
                               w.out_features, out.data_ptr()), "gguf_matmul")
    return out


def gguf_matmul_multi(x: torch.Tensor, weights: Sequence[GGUFWeight],
                      outs: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """[x @ W^T for W in weights] in one C call: one activation quantization, one parallel
    region. For projections that share an input (q/k/v, gate/up) whose GGUF types differ, or
    to save the per-call overhead in decode. At most 8 weights, all with x's in_features.
    """
    if not 1 <= len(weights) <= 8:
        raise ValueError(f"1 to 8 weights, got {len(weights)}")
    x = _f32_input(x, "x")
    k = x.shape[-1] if x.dim() else -1
    for w in weights:
        if type(w) is not GGUFWeight or w.qtype not in MATMUL_TYPES:
            raise TypeError("weights must be matmul-type GGUFWeight (see prepare_weight)")
        if w.in_features != k:
            raise ValueError(f"x {tuple(x.shape)} does not end in in_features={w.in_features}")
    lead = tuple(x.shape[:-1])
    if outs is None:
        outs = [torch.empty((*lead, w.out_features), dtype=torch.float32) for w in weights]
    elif len(outs) != len(weights) or any(
            o.shape != (*lead, w.out_features) or o.dtype is not torch.float32
            or not o.is_contiguous() for o, w in zip(outs, weights, strict=True)):
        raise ValueError("outs must be contiguous float32 tensors [..., out_features] per weight")
    n = len(weights)
    check(lib().ls_gguf_matmul_multi(
        x.data_ptr(), x.numel() // k, k, n, (ctypes.c_void_p * n)(*[w.ptr for w in weights]),
        (ctypes.c_int * n)(*[w.qtype for w in weights]),
        (ctypes.c_int * n)(*[w.out_features for w in weights]),
        (ctypes.c_void_p * n)(*[o.data_ptr() for o in outs])), "gguf_matmul_multi")
    return list(outs)


def embedding(ids: torch.Tensor, qweight: GGUFWeight | np.ndarray | torch.Tensor,
              qtype: int | None = None, num_rows: int | None = None,
              scale: float = 1.0) -> torch.Tensor:
    """Dequantized rows table[ids] * scale -> [*ids.shape, hidden] float32.

    `num_rows` is the vocabulary size (the table's out_features). Any type in BLOCKS works
    (Q8_0, Q8_K, the K-quants, floats); only the selected rows are expanded.
    """
    w = qweight if isinstance(qweight, GGUFWeight) else prepare_weight(
        qweight, _required(qtype, "qtype"), _required(num_rows, "num_rows"))
    if not isinstance(ids, torch.Tensor) or ids.dtype.is_floating_point:
        raise TypeError("ids must be an integer torch tensor")
    flat = ids.reshape(-1).to(torch.int64).contiguous()
    out = torch.empty((*ids.shape, w.in_features), dtype=torch.float32)
    check(lib().ls_embedding(flat.data_ptr(), flat.numel(), w.ptr, w.qtype, w.in_features,
                             w.out_features, float(scale), out.data_ptr()),
          f"embedding (ids must be in [0, {w.out_features}))")
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None,
             weight_offset: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same contract as kernels.reference.rms_norm (float32 tensors)."""
    x = _f32_input(x, "x")
    weight = _f32_input(weight, "weight")
    hidden = x.shape[-1]
    if weight.shape != (hidden,):
        raise ValueError(f"weight {tuple(weight.shape)} must be ({hidden},)")
    out = torch.empty_like(x)
    res_out = None
    res_ptr = res_out_ptr = None
    if residual is not None:
        residual = _f32_input(residual, "residual")
        if residual.shape != x.shape:
            raise ValueError(f"residual {tuple(residual.shape)} must match x {tuple(x.shape)}")
        res_out = torch.empty_like(x)
        res_ptr, res_out_ptr = residual.data_ptr(), res_out.data_ptr()
    lib().ls_rms_norm(x.data_ptr(), res_ptr, res_out_ptr, weight.data_ptr(), out.data_ptr(),
                      x.numel() // hidden, hidden, float(eps), float(weight_offset))
    return out, res_out


def rotary_embedding(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                     cos_sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as kernels.reference.rotary_embedding (float32 q/k, new tensors)."""
    cos_sin = _f32_input(cos_sin, "cos_sin")
    pos = positions.to(torch.int64).contiguous()
    rot = cos_sin.shape[-1]
    outs = []
    for name, x in (("q", q), ("k", k)):
        x = _f32_input(x, name)
        if x.dim() != 3 or x.shape[0] != pos.numel():
            raise ValueError(f"{name} {tuple(x.shape)} must be [T={pos.numel()}, heads, hd]")
        out = torch.empty_like(x)
        check(lib().ls_rotary(x.data_ptr(), out.data_ptr(), pos.data_ptr(), x.shape[0],
                              x.shape[1], x.shape[2], cos_sin.data_ptr(), rot,
                              cos_sin.shape[0]),
              f"rotary ({name} head_dim {x.shape[2]} vs rot {rot}, positions < "
              f"{cos_sin.shape[0]})")
        outs.append(out)
    return outs[0], outs[1]


_ACTIVATIONS = {"silu": 0, "gelu_tanh": 1}


def act_and_mul(x: torch.Tensor, activation: str,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """act(x[..., :d]) * x[..., d:] for float32 x [..., 2d]; 'silu' or 'gelu_tanh'.

    `out` ([..., d] float32, contiguous) may be given to reuse a buffer across steps.
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected {sorted(_ACTIVATIONS)}")
    x = _f32_input(x, "x")
    if x.shape[-1] % 2:
        raise ValueError(f"last dim of x must be even, got {x.shape[-1]}")
    d = x.shape[-1] // 2
    shape = (*x.shape[:-1], d)
    if out is None:
        out = torch.empty(shape, dtype=torch.float32)
    elif out.shape != shape or out.dtype is not torch.float32 or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous float32 tensor of shape {shape}")
    check(lib().ls_act_and_mul(x.data_ptr(), out.data_ptr(), x.numel() // (2 * d), d,
                               _ACTIVATIONS[activation]), "act_and_mul")
    return out


def _required(value: int | None, name: str) -> int:
    if value is None:
        raise ValueError(f"{name} is required when qweight is not a GGUFWeight")
    return int(value)
