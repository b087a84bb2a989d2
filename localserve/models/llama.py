"""The Llama family: Llama 2/3.x, Mistral, Qwen2/2.5 (q/k/v bias) and Qwen3 (per-head q/k norm).

Differences are flags of ModelArchConfig (qkv_bias, qk_norm, sliding windows, rope scaling);
parameter names match the HF checkpoints, so a safetensors folder loads without renaming.
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
from localserve.models.arch import ModelArchConfig
from localserve.models.base import CausalLM


class LlamaAttention(nn.Module):
    def __init__(self, arch: ModelArchConfig, layer_idx: int, rotary: RotaryEmbedding) -> None:
        super().__init__()
        declare_qkv(self, arch.hidden_size, arch.num_heads, arch.num_kv_heads, arch.head_dim,
                    arch.qkv_bias, arch.o_bias)
        self.q_norm = RMSNorm(arch.head_dim, arch.rms_norm_eps) if arch.qk_norm else None
        self.k_norm = RMSNorm(arch.head_dim, arch.rms_norm_eps) if arch.qk_norm else None
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


class LlamaDecoderLayer(nn.Module):
    def __init__(self, arch: ModelArchConfig, layer_idx: int, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(arch, layer_idx, rotary)
        self.mlp = GatedMLP(arch.hidden_size, arch.intermediate_size, arch.activation,
                            arch.mlp_bias)
        self.input_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor,
                residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm.add_and_norm(hidden, residual)
        hidden = self.self_attn(positions, hidden)
        hidden, residual = self.post_attention_layernorm.add_and_norm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(self, arch: ModelArchConfig) -> None:
        super().__init__()
        self.embed_tokens = VocabEmbedding(arch.vocab_size, arch.hidden_size)
        rotary = RotaryEmbedding(arch.head_dim, arch.max_position_embeddings, arch.rope_theta,
                                 arch.rope_scaling, arch.rope_freq_factors)
        self.layers = nn.ModuleList(LlamaDecoderLayer(arch, i, rotary)
                                    for i in range(arch.num_layers))
        self.norm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)  # [T, hidden]
        residual: torch.Tensor | None = None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual)
        if residual is None:  # no layers
            return self.norm(hidden)
        hidden, _ = self.norm.add_and_norm(hidden, residual)
        return hidden


class LlamaForCausalLM(CausalLM):
    def __init__(self, arch: ModelArchConfig) -> None:
        super().__init__(arch, LlamaModel(arch))
