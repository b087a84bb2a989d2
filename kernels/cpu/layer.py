"""A whole decoder layer in one C call (ls_layer.c): its descriptors and their checks.

`DecoderLayerKernel` is built once per layer from the layer's raw GGUF weights and norms and
checked then; per forward, `StepDesc` describes where the packed tokens sit and `run` checks
only the activations. The C side runs the same kernels the module path calls one by one.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch

from localserve.kernels.cpu._runtime import check, lib
from localserve.kernels.cpu.attention import _cache_dtype
from localserve.kernels.cpu.ops import MATMUL_TYPES, GGUFWeight

P, N, F, I64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_int64
ACTIVATIONS = {"silu": 0, "gelu_tanh": 1}


class LayerDesc(ctypes.Structure):
    _fields_ = [("hidden", N), ("num_heads", N), ("num_kv_heads", N), ("head_dim", N),
                ("inter", N), ("act_kind", N), ("eps", F), ("norm_offset", F),
                ("input_norm", P), ("pre_mlp_norm", P), ("attn_out_norm", P),
                ("mlp_out_norm", P), ("q_norm", P), ("k_norm", P),
                ("w_qkv", P * 3), ("t_qkv", N * 3), ("w_o", P), ("t_o", N),
                ("w_gate_up", P * 2), ("t_gate_up", N * 2), ("w_down", P), ("t_down", N),
                ("cos_sin", P), ("rot_dim", N), ("max_pos", I64),
                ("scale", F), ("soft_cap", F), ("window", N),
                ("k_cache", P), ("v_cache", P), ("kv_dtype", N), ("num_blocks", N),
                ("block_size", N)]


class StepDesc(ctypes.Structure):
    _fields_ = [("num_tokens", N), ("num_seqs", N), ("max_blocks", N),
                ("positions", P), ("slot_mapping", P), ("block_tables", P),
                ("query_start_loc", P), ("seq_lens", P)]


@dataclass(frozen=True)
class DecoderLayerWeights:
    """What one layer reads. Norm weights are fp32 [hidden] (q/k norms [head_dim]); the
    `*_out_norm`s are Gemma's post-norms (None for Llama), `q_norm`/`k_norm` optional."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    activation: str  # "silu" | "gelu_tanh"
    eps: float
    norm_offset: float
    input_norm: torch.Tensor
    pre_mlp_norm: torch.Tensor
    attn_out_norm: torch.Tensor | None
    mlp_out_norm: torch.Tensor | None
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    qkv: tuple[GGUFWeight, GGUFWeight, GGUFWeight]
    o: GGUFWeight
    gate_up: tuple[GGUFWeight, GGUFWeight]
    down: GGUFWeight
    cos_sin: torch.Tensor  # [max_positions, rotary_dim] (cos | sin)
    scale: float
    sliding_window: int | None
    soft_cap: float | None


def _norm_ptr(w: torch.Tensor | None, size: int, name: str) -> int | None:
    if w is None:
        return None
    if w.dtype is not torch.float32 or not w.is_contiguous() or w.shape != (size,):
        raise ValueError(f"{name} must be a contiguous float32 [{size}] tensor")
    return w.data_ptr()


def _weight(w: GGUFWeight, out_features: int, in_features: int, name: str) -> GGUFWeight:
    if type(w) is not GGUFWeight or w.qtype not in MATMUL_TYPES:
        raise TypeError(f"{name} must be a matmul-type GGUFWeight")
    if (w.out_features, w.in_features) != (out_features, in_features):
        raise ValueError(f"{name} is [{w.out_features}, {w.in_features}], expected "
                         f"[{out_features}, {in_features}]")
    return w


class DecoderLayerKernel:
    """One layer's descriptor; keeps every buffer it points at alive."""

    def __init__(self, w: DecoderLayerWeights) -> None:
        if w.activation not in ACTIVATIONS:
            raise ValueError(f"activation {w.activation!r} is not one of {sorted(ACTIVATIONS)}")
        if w.num_heads <= 0 or w.num_kv_heads <= 0 or w.num_heads % w.num_kv_heads:
            raise ValueError(f"heads {w.num_heads}/{w.num_kv_heads}: not a GQA layout")
        hidden, hd = w.input_norm.shape[0], w.head_dim
        inter = w.gate_up[0].out_features
        qn, kvn = w.num_heads * hd, w.num_kv_heads * hd
        for part, n in zip(w.qkv, (qn, kvn, kvn), strict=True):
            _weight(part, n, hidden, "q/k/v")
        _weight(w.o, hidden, qn, "o_proj")
        for part in w.gate_up:
            _weight(part, inter, hidden, "gate/up")
        _weight(w.down, hidden, inter, "down_proj")
        cs = w.cos_sin
        if (cs.dtype is not torch.float32 or not cs.is_contiguous() or cs.dim() != 2
                or cs.shape[1] > hd or cs.shape[1] % 2):
            raise ValueError(f"cos_sin {tuple(cs.shape)} must be contiguous float32 "
                             f"[positions, rotary_dim <= {hd}, even]")
        self.weights = w  # the tensors and raw GGUF buffers the pointers below refer to
        d = self.desc = LayerDesc()
        d.hidden, d.num_heads, d.num_kv_heads, d.head_dim, d.inter = (
            hidden, w.num_heads, w.num_kv_heads, hd, inter)
        d.act_kind, d.eps, d.norm_offset = ACTIVATIONS[w.activation], w.eps, w.norm_offset
        d.input_norm = _norm_ptr(w.input_norm, hidden, "input_norm")
        d.pre_mlp_norm = _norm_ptr(w.pre_mlp_norm, hidden, "pre_mlp_norm")
        d.attn_out_norm = _norm_ptr(w.attn_out_norm, hidden, "attn_out_norm")
        d.mlp_out_norm = _norm_ptr(w.mlp_out_norm, hidden, "mlp_out_norm")
        d.q_norm = _norm_ptr(w.q_norm, hd, "q_norm")
        d.k_norm = _norm_ptr(w.k_norm, hd, "k_norm")
        d.w_qkv[:] = [p.ptr for p in w.qkv]
        d.t_qkv[:] = [p.qtype for p in w.qkv]
        d.w_o, d.t_o = w.o.ptr, w.o.qtype
        d.w_gate_up[:] = [p.ptr for p in w.gate_up]
        d.t_gate_up[:] = [p.qtype for p in w.gate_up]
        d.w_down, d.t_down = w.down.ptr, w.down.qtype
        d.cos_sin, d.rot_dim, d.max_pos = cs.data_ptr(), cs.shape[1], cs.shape[0]
        d.scale, d.soft_cap, d.window = w.scale, w.soft_cap or 0.0, w.sliding_window or 0
        self.hidden = hidden
        self._address = ctypes.addressof(d)
        self._caches: tuple[torch.Tensor, torch.Tensor] | None = None
        self._fn = lib().ls_decoder_layer

    def bind_cache(self, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
        """Points the layer at its KV cache [num_blocks, block_size, kv_heads, head_dim]."""
        code = _cache_dtype(k_cache, "k_cache")
        if v_cache.shape != k_cache.shape or v_cache.dtype != k_cache.dtype:
            raise ValueError("v_cache must match k_cache in shape and dtype")
        _cache_dtype(v_cache, "v_cache")
        num_blocks, block_size, kv_heads, hd = k_cache.shape
        d = self.desc
        if (kv_heads, hd) != (d.num_kv_heads, d.head_dim):
            raise ValueError(f"KV cache {tuple(k_cache.shape)} does not hold "
                             f"{d.num_kv_heads} heads of {d.head_dim}")
        d.k_cache, d.v_cache = k_cache.data_ptr(), v_cache.data_ptr()
        d.kv_dtype, d.num_blocks, d.block_size = code, num_blocks, block_size
        self._caches = (k_cache, v_cache)  # held: identity then proves they are unchanged

    def run(self, step: Step, k_cache: torch.Tensor, v_cache: torch.Tensor,
            hidden: torch.Tensor, residual: torch.Tensor, first: bool) -> None:
        """hidden, residual: contiguous float32 [T, hidden], updated in place (see ls_layer.c:
        hidden in = the previous output not yet added, out = this layer's; first: residual
        is only written)."""
        caches = self._caches
        if caches is None or k_cache is not caches[0] or v_cache is not caches[1]:
            self.bind_cache(k_cache, v_cache)
        shape = (step.desc.num_tokens, self.hidden)
        for name, t in (("hidden", hidden), ("residual", residual)):
            if t.dtype is not torch.float32 or not t.is_contiguous() or t.shape != shape:
                raise ValueError(f"{name} must be a contiguous float32 tensor of shape {shape}")
        check(self._fn(self._address, step.address, hidden.data_ptr(), residual.data_ptr(),
                       int(first)),
              "decoder_layer (positions, slots or block tables out of range)")


class Step:
    """One forward's token layout for every layer (`kernels.reference` metadata layouts)."""

    def __init__(self, positions: torch.Tensor, slot_mapping: torch.Tensor,
                 block_tables: torch.Tensor, query_start_loc: torch.Tensor,
                 seq_lens: torch.Tensor) -> None:
        def typed(t: torch.Tensor, dtype: torch.dtype, name: str) -> torch.Tensor:
            if not isinstance(t, torch.Tensor) or not t.is_cpu or t.dtype.is_floating_point:
                raise TypeError(f"{name} must be an integer CPU tensor")
            return t if t.dtype is dtype and t.is_contiguous() else t.to(dtype).contiguous()

        pos = typed(positions, torch.int64, "positions").reshape(-1)
        slots = typed(slot_mapping, torch.int64, "slot_mapping").reshape(-1)
        bt = typed(block_tables, torch.int32, "block_tables")
        qsl = typed(query_start_loc, torch.int32, "query_start_loc").reshape(-1)
        lens = typed(seq_lens, torch.int32, "seq_lens").reshape(-1)
        if slots.numel() != pos.numel():
            raise ValueError("slot_mapping must have one slot per token")
        if bt.dim() != 2 or bt.shape[0] < lens.numel() or qsl.numel() != lens.numel() + 1:
            raise ValueError("block_tables must be [num_seqs, max_blocks] and "
                             "query_start_loc [num_seqs + 1]")
        self._keep = (pos, slots, bt, qsl, lens)
        d = self.desc = StepDesc()
        d.num_tokens, d.num_seqs, d.max_blocks = pos.numel(), lens.numel(), bt.shape[1]
        d.positions, d.slot_mapping = pos.data_ptr(), slots.data_ptr()
        d.block_tables, d.query_start_loc, d.seq_lens = (bt.data_ptr(), qsl.data_ptr(),
                                                         lens.data_ptr())
        self.address = ctypes.addressof(d)


__all__ = ["DecoderLayerKernel", "DecoderLayerWeights", "Step"]
