"""What every architecture shares on top of its decoder stack: the LM head and logits."""

from __future__ import annotations

import torch
from torch import nn

from localserve.layers.linear import Linear
from localserve.models.arch import ModelArchConfig


class CausalLM(nn.Module):
    """`model` (embeddings + decoder layers + final norm) followed by the LM head."""

    def __init__(self, arch: ModelArchConfig, model: nn.Module) -> None:
        super().__init__()
        self.arch = arch
        self.model = model
        self.lm_head = Linear(arch.hidden_size, arch.vocab_size)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """input_ids, positions [T] int64 (packed) -> hidden [T, hidden_size]."""
        return self.model(input_ids, positions)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden_size] -> logits [N, vocab_size] in the head's dtype, or float32
        when soft-capped (tanh in float). Not cast up front: the sampler reads any float dtype,
        and a float32 copy of a [256, 152k] bf16 batch cost a 112 us kernel per step and doubled
        what the fused draw reads (H200, benchmarks.md)."""
        logits = self.lm_head(hidden)
        cap = self.arch.final_logit_softcapping
        return logits if cap is None else cap * torch.tanh(logits.float() / cap)
