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
        return self.o_proj(self.attend(positions, x))

    def attend(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The attention output before o_proj, [T, num_heads * head_dim]."""
        q, k, v = project_qkv(self, x)
        out = self.attn.forward_rope(positions, q, k, v, self.rotary, self.q_norm,
                                     self.k_norm)  # [T, num_heads, head_dim]
        return out.reshape(x.shape[0], self.num_heads * self.head_dim)


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
        """(previous output, residual) -> (MLP output, residual), the output not yet added:
        the contract every decoder layer of the model loop keeps (the C layers too)."""
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm.add_and_norm(hidden, residual)
        hidden, residual = self._attention(positions, hidden, residual)
        return self.mlp(hidden), residual

    def forward_normed(self, positions: torch.Tensor, normed: torch.Tensor,
                       residual: torch.Tensor, next_norm: RMSNorm
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """(this layer's normed input, residual) -> (next_norm's normed input, residual):
        each projection that feeds the residual stream is fused with the add and norm after
        it where its method can (the cuda gemv at decode saves two launches a layer)."""
        hidden, residual = self._attention(positions, normed, residual)
        return next_norm.project_add_and_norm(self.mlp.down_proj, self.mlp.activate(hidden),
                                              residual)

    def _attention(self, positions: torch.Tensor, normed: torch.Tensor,
                   residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attn = self.self_attn.attend(positions, normed)
        return self.post_attention_layernorm.project_add_and_norm(self.self_attn.o_proj, attn,
                                                                  residual)


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
        if len(self.layers) and all(isinstance(x, LlamaDecoderLayer) for x in self.layers):
            # Each layer also applies the next one's input norm (the final norm for the last).
            residual, hidden = hidden, self.layers[0].input_layernorm(hidden)
            next_norms = [*(x.input_layernorm for x in self.layers[1:]), self.norm]
            for layer, next_norm in zip(self.layers, next_norms, strict=True):
                hidden, residual = layer.forward_normed(positions, hidden, residual, next_norm)
            return hidden
        # Layers replaced by other modules (the C layers) keep the per-layer contract.
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
