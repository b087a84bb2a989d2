"""Ground truth for every kernel: plain torch, computed in fp32 (or float64), slow and obvious.

Each backend kernel (Triton, C, MLX) is tested against the function of the same name here.
Layouts shared by all of them:
- KV cache of one layer: k_cache, v_cache = [num_blocks, block_size, num_kv_heads, head_dim].
- Packed tokens: all sequences' new tokens back to back, [num_tokens, num_heads, head_dim];
  `query_start_loc` [num_seqs + 1] gives each sequence's slice, `seq_lens` [num_seqs] its full
  length (cached + new); its new tokens are the last ones, so token i of sequence s sits at
  position seq_lens[s] - q_len[s] + i.
- block_tables [num_seqs, max_blocks_per_seq] int32, padded with any valid block id.
- slot_mapping [num_tokens] int64: block_id * block_size + offset; a negative slot is skipped.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def write_kv(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
             v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Stores each token's K/V ([num_tokens, num_kv_heads, head_dim]) at its slot, in place."""
    block_size = k_cache.shape[1]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    blocks, offsets = slots // block_size, slots % block_size
    k_cache[blocks, offsets] = key[keep].to(k_cache.dtype)
    v_cache[blocks, offsets] = value[keep].to(v_cache.dtype)


def gather_kv(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """The first `length` tokens of one sequence's cache: [length, num_kv_heads, head_dim]."""
    block_size = cache.shape[1]
    num_blocks = (length + block_size - 1) // block_size
    blocks = cache[block_table[:num_blocks].long()]  # [nb, block_size, kvh, hd]
    return blocks.reshape(-1, *cache.shape[2:])[:length]


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    block_tables: torch.Tensor, query_start_loc: torch.Tensor,
                    seq_lens: torch.Tensor, scale: float, sliding_window: int | None = None,
                    soft_cap: float | None = None) -> torch.Tensor:
    """Causal attention of packed queries over paged K/V (GQA/MQA, sliding window).

    A query at position p sees keys at positions k with k <= p and, with a window w,
    p - k < w. Returns [num_tokens, num_heads, head_dim] in q's dtype (math in fp32).
    """
    num_heads = q.shape[1]
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.empty_like(q)
    starts = query_start_loc.tolist()
    for s, seq_len in enumerate(seq_lens.tolist()):
        q_s = q[starts[s]:starts[s + 1]].float()  # [q_len, nh, hd]
        q_len = q_s.shape[0]
        if q_len == 0:
            continue
        k = gather_kv(k_cache, block_tables[s], seq_len).float()  # [seq_len, kvh, hd]
        v = gather_kv(v_cache, block_tables[s], seq_len).float()
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q_s, k) * scale  # [nh, q_len, seq_len]
        if soft_cap is not None:
            scores = soft_cap * torch.tanh(scores / soft_cap)
        q_pos = torch.arange(seq_len - q_len, seq_len, device=q.device).unsqueeze(1)
        k_pos = torch.arange(seq_len, device=q.device).unsqueeze(0)
        allowed = k_pos <= q_pos
        if sliding_window is not None:
            allowed &= (q_pos - k_pos) < sliding_window
        scores = scores.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[starts[s]:starts[s + 1]] = torch.einsum("hqk,khd->qhd", probs, v).to(q.dtype)
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None,
             weight_offset: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RMSNorm(x [+ residual]) * (weight_offset + weight); fp32 math.

    With `residual`, returns (normed, x + residual): the fused pre-norm residual add.
    Gemma stores `weight` as a delta from 1, hence `weight_offset` = 1.
    """
    if residual is not None:
        x = (x.float() + residual.float()).to(x.dtype)
        residual = x
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * (weight_offset + weight.float())).to(x.dtype), residual


def rope_cos_sin(rotary_dim: int, max_positions: int, base: float,
                 scaling: dict | None = None) -> torch.Tensor:
    """cos/sin table [max_positions, rotary_dim]: cos in the first half, sin in the second.

    `scaling` follows HF's rope_scaling dicts: {"rope_type": "linear", "factor": f} or
    Llama 3's {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    "original_max_position_embeddings"}.
    """
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim))
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if rope_type == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif rope_type == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - low) / (high - low)
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        mid = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        is_mid = (wavelen <= old_len / low) & (wavelen >= old_len / high)
        inv_freq = torch.where(is_mid, mid, scaled)
    elif rope_type not in ("default", None):
        raise ValueError(f"unsupported rope scaling {rope_type!r}")
    freqs = torch.outer(torch.arange(max_positions, dtype=torch.float64), inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).float()


def rotary_embedding(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                     cos_sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """NeoX-style rotation (first half / second half pairs) of q [T, nh, hd] and k [T, kvh, hd]."""

    def rotate(x: torch.Tensor) -> torch.Tensor:
        cs = cos_sin[positions.long()]  # [T, rot]
        half = cs.shape[-1] // 2
        cos, sin = cs[:, None, :half], cs[:, None, half:]
        xf = x.float()
        x1, x2 = xf[..., :half], xf[..., half:2 * half]
        rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
        return torch.cat([rotated, xf[..., 2 * half:]], dim=-1).to(x.dtype)

    return rotate(q), rotate(k)


def rope_and_cache(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   cos_sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   slot_mapping: torch.Tensor, q_norm: torch.Tensor | None = None,
                   k_norm: torch.Tensor | None = None, eps: float = 1e-6,
                   norm_offset: float = 0.0) -> torch.Tensor:
    """Per-head q/k RMSNorm (if given), rotary, then k and v into the cache; returns q."""
    if q_norm is not None and k_norm is not None:
        q = rms_norm(q, q_norm, eps, None, norm_offset)[0]
        k = rms_norm(k, k_norm, eps, None, norm_offset)[0]
    q, k = rotary_embedding(positions, q, k, cos_sin)
    write_kv(k, v, k_cache, v_cache, slot_mapping)
    return q


def sampling_probs(logits: torch.Tensor, temps: torch.Tensor) -> torch.Tensor:
    """The distribution a temperature sampler draws from: softmax(logits / T) in float64 per
    row; a one-hot on the first maximum where T is 0 (greedy)."""
    x = logits.double()
    greedy = temps <= 0
    t = torch.where(greedy, torch.ones_like(temps), temps).double()
    probs = torch.softmax(x / t[:, None], dim=-1)
    hot = torch.nn.functional.one_hot(x.argmax(-1), x.shape[-1]).double()
    return torch.where(greedy[:, None], hot, probs)


def act_and_mul(x: torch.Tensor, activation: str) -> torch.Tensor:
    """act(x[..., :d]) * x[..., d:] for x [..., 2d]; activation is 'silu' or 'gelu_tanh'."""
    d = x.shape[-1] // 2
    gate, up = x[..., :d].float(), x[..., d:].float()
    if activation == "silu":
        act = F.silu(gate)
    elif activation == "gelu_tanh":
        act = F.gelu(gate, approximate="tanh")
    else:
        raise ValueError(f"unknown activation {activation!r}")
    return (act * up).to(x.dtype)


def linear(x: torch.Tensor, weight: torch.Tensor,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight^T (+ bias) in fp32, returned in x's dtype (the gemv kernel's contract)."""
    y = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
    return y.to(x.dtype)


def gated_linear(x: torch.Tensor, weight: torch.Tensor, activation: str) -> torch.Tensor:
    """act(x @ gate^T) * (x @ up^T) for weight = [gate; up], all in fp32 and rounded once to
    x's dtype (the gated GEMM's contract: gate|up is never rounded on its own)."""
    return act_and_mul(F.linear(x.float(), weight.float()), activation).to(x.dtype)


def gguf_linear(x: torch.Tensor, raw: np.ndarray, qtype: int) -> torch.Tensor:
    """x [..., in] @ W.T in float64, W dequantized by the `gguf` package from raw GGUF blocks.

    `raw` is the tensor as stored in the file ([out, bytes_per_row] uint8 for block types);
    `qtype` a gguf.GGMLQuantizationType value.
    """
    from gguf.quants import dequantize

    w = torch.from_numpy(np.asarray(dequantize(raw, qtype), dtype=np.float64))
    return x.double() @ w.T


def quantize_q8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [M, K] in blocks of 32 values -> (int8 values round-to-even(x * 127 / amax), fp32
    scales amax / 127, fp32 scale x the block's int8 sum): llama.cpp's q8_1 for x, with x'
    = values * scales the quantized x."""
    blocks = x.float().reshape(x.shape[0], -1, 32)
    amax = blocks.abs().amax(dim=-1)
    # A tensor divisor: torch's CPU `scalar / tensor` multiplies by a reciprocal, 1 ulp off
    # the correctly rounded quotient the kernels use, which moves values at .5 ties.
    inverse = torch.where(amax > 0, torch.full_like(amax, 127.0) / amax.clamp_min(1e-30),
                          torch.zeros_like(amax))
    q = torch.round(blocks * inverse[..., None])
    d = amax / 127.0
    return q.to(torch.int8).reshape(x.shape), d, d * q.sum(dim=-1)


def gguf_q8_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x' @ weight^T in fp32, x' = x after its int8 round trip (`quantize_q8`): what the
    int8 GGUF kernel computes, `weight` being the GGUF blocks dequantized."""
    q, d, _ = quantize_q8(x)
    x_q8 = (q.float().reshape(x.shape[0], -1, 32) * d[..., None]).reshape(x.shape)
    return x_q8 @ weight.float().T
