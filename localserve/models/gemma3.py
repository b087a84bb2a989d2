"""Gemma 3 text (`gemma3_text`, and the text half of `gemma3`).

Versus Llama: embeddings scaled by sqrt(hidden) (rounded to the weight dtype, as HF does),
Gemma RMSNorm (weight stored as a delta from 1), per-head q/k norm, norms after attention
and after the MLP as well as before, gelu-tanh MLP, scale query_pre_attn_scalar**-0.5, and
interleaved sliding-window / global layers with their own RoPE base and scaling.
"""

from __future__ import annotations

import torch
from torch import nn

from localserve.layers.attention import Attention
from localserve.layers.embedding import VocabEmbedding
from localserve.layers.fusion import declare_qkv, project_qkv
from localserve.layers.mlp import GatedMLP
from localserve.layers.norm import RMSNorm
from localserve.layers.rotary import RotaryEmbedding
from localserve.models.arch import SLIDING_ATTENTION, ModelArchConfig
from localserve.models.base import CausalLM


class Gemma3Attention(nn.Module):
    def __init__(self, arch: ModelArchConfig, layer_idx: int, rotary: RotaryEmbedding) -> None:
        super().__init__()
        declare_qkv(self, arch.hidden_size, arch.num_heads, arch.num_kv_heads, arch.head_dim,
                    arch.qkv_bias, arch.o_bias)
        self.q_norm = RMSNorm(arch.head_dim, arch.rms_norm_eps, offset=1.0)
        self.k_norm = RMSNorm(arch.head_dim, arch.rms_norm_eps, offset=1.0)
        self.rotary = rotary
        self.attn = Attention(layer_idx, arch.num_heads, arch.num_kv_heads, arch.head_dim,
                              arch.attn_scale, arch.layer_sliding_window(layer_idx),
                              arch.attn_logit_softcapping)

    def forward(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        num_tokens = x.shape[0]
        q, k, v = project_qkv(self, x)
        out = self.attn.forward_rope(positions, q, k, v, self.rotary, self.q_norm,
                                     self.k_norm)  # [T, num_heads, head_dim]
        return self.o_proj(out.reshape(num_tokens, self.num_heads * self.head_dim))


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, arch: ModelArchConfig, layer_idx: int, rotary: RotaryEmbedding) -> None:
        super().__init__()
        eps, hidden = arch.rms_norm_eps, arch.hidden_size
        self.self_attn = Gemma3Attention(arch, layer_idx, rotary)
        self.mlp = GatedMLP(hidden, arch.intermediate_size, arch.activation, arch.mlp_bias)
        self.input_layernorm = RMSNorm(hidden, eps, offset=1.0)
        self.post_attention_layernorm = RMSNorm(hidden, eps, offset=1.0)
        self.pre_feedforward_layernorm = RMSNorm(hidden, eps, offset=1.0)
        self.post_feedforward_layernorm = RMSNorm(hidden, eps, offset=1.0)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor,
                residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        # `hidden` is the previous layer's post-MLP output not yet added to `residual`.
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm.add_and_norm(hidden, residual)
        hidden = self.post_attention_layernorm(self.self_attn(positions, hidden))
        hidden, residual = self.pre_feedforward_layernorm.add_and_norm(hidden, residual)
        hidden = self.post_feedforward_layernorm(self.mlp(hidden))
        return hidden, residual


class Gemma3Model(nn.Module):
    def __init__(self, arch: ModelArchConfig) -> None:
        super().__init__()
        self.hidden_size = arch.hidden_size
        self._scales: dict[torch.dtype, float] = {}
        self.embed_tokens = VocabEmbedding(arch.vocab_size, arch.hidden_size)
        global_rope = RotaryEmbedding(arch.head_dim, arch.max_position_embeddings,
                                      arch.rope_theta, arch.rope_scaling, arch.rope_freq_factors)
        local_rope = RotaryEmbedding(arch.head_dim, arch.max_position_embeddings,
                                     arch.rope_local_theta or arch.rope_theta,
                                     arch.rope_local_scaling)
        self.layers = nn.ModuleList(
            Gemma3DecoderLayer(arch, i, local_rope if kind == SLIDING_ATTENTION else global_rope)
            for i, kind in enumerate(arch.layer_types))
        self.norm = RMSNorm(arch.hidden_size, arch.rms_norm_eps, offset=1.0)

    def _embed_scale(self, dtype: torch.dtype) -> float:
        """sqrt(hidden) rounded to `dtype`, as HF casts its fp32 scale to the weight dtype
        (a Python float: no device copy per step, safe under CUDA graph capture)."""
        scale = self._scales.get(dtype)
        if scale is None:
            scale = float(torch.tensor(self.hidden_size ** 0.5, dtype=torch.float32).to(dtype))
            self._scales[dtype] = scale
        return scale

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)  # [T, hidden]
        hidden = hidden * self._embed_scale(hidden.dtype)
        residual: torch.Tensor | None = None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual)
        if residual is None:
            return self.norm(hidden)
        hidden, _ = self.norm.add_and_norm(hidden, residual)
        return hidden


class Gemma3ForCausalLM(CausalLM):
    def __init__(self, arch: ModelArchConfig) -> None:
        super().__init__(arch, Gemma3Model(arch))
