"""Rotary position embedding (NeoX halves), with a cos/sin table built once per device.

The table layout is `localserve.kernels.reference.rope_cos_sin`'s: [max_positions, rotary_dim],
cos in the first half, sin in the second. Scaling follows HF's rope_scaling dicts ("linear",
"llama3"); `freq_factors` are llama.cpp's per-frequency divisors (the `rope_freqs` tensor a
GGUF of Llama 3.1 carries instead of a scaling dict).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from localserve.kernels.reference import rope_cos_sin
from localserve.layers.ops import DEFAULT_LAYER_OPS, LayerOps


def build_cos_sin(rotary_dim: int, max_positions: int, base: float,
                  scaling: Mapping[str, Any] | None = None,
                  freq_factors: Sequence[float] | None = None) -> torch.Tensor:
    """cos/sin table [max_positions, rotary_dim] in fp32 (computed in float64)."""
    if freq_factors is None:
        return rope_cos_sin(rotary_dim, max_positions, base, dict(scaling) if scaling else None)
    if scaling is not None:
        raise ValueError("rope freq_factors and a rope scaling dict cannot both be set")
    exponent = torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim
    factors = torch.tensor(list(freq_factors), dtype=torch.float64)
    if factors.numel() != rotary_dim // 2:
        raise ValueError(f"rope_freqs has {factors.numel()} entries, expected {rotary_dim // 2}")
    inv_freq = 1.0 / (base ** exponent) / factors
    freqs = torch.outer(torch.arange(max_positions, dtype=torch.float64), inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).float()


class RotaryEmbedding(nn.Module):
    """Rotates q [T, num_heads, head_dim] and k [T, num_kv_heads, head_dim] by position."""

    def __init__(self, rotary_dim: int, max_positions: int, base: float,
                 scaling: Mapping[str, Any] | None = None,
                 freq_factors: Sequence[float] | None = None) -> None:
        super().__init__()
        self.rotary_dim = rotary_dim
        self.max_positions = max_positions
        self.base = base
        self.scaling = dict(scaling) if scaling else None
        self.freq_factors = tuple(freq_factors) if freq_factors is not None else None
        self.layer_ops: LayerOps = DEFAULT_LAYER_OPS
        self._tables: dict[torch.device, torch.Tensor] = {}

    def cos_sin(self, device: torch.device) -> torch.Tensor:
        """The table on `device`, built on first use (call once before graph capture)."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        table = self._tables.get(device)
        if table is None:
            table = build_cos_sin(self.rotary_dim, self.max_positions, self.base, self.scaling,
                                  self.freq_factors).to(device)
            self._tables[device] = table
        return table

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.layer_ops.rotary_embedding(positions, q, k, self.cos_sin(q.device))

    def extra_repr(self) -> str:
        return (f"dim={self.rotary_dim}, max_positions={self.max_positions}, base={self.base}, "
                f"scaling={self.scaling}, freq_factors={self.freq_factors is not None}")
