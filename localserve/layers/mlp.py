"""The gated MLP: down(act(gate(x)) * up(x)), gate and up kept as separate linears.

They stay separate because GGUF files quantize them with different types; the activation
goes through the swappable `layer_ops.act_and_mul` on their concatenation.
"""

from __future__ import annotations

import torch
from torch import nn

from localserve.layers.linear import Linear
from localserve.layers.ops import DEFAULT_LAYER_OPS, LayerOps


class GatedMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, activation: str,
                 bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = Linear(hidden_size, intermediate_size, bias)
        self.up_proj = Linear(hidden_size, intermediate_size, bias)
        self.down_proj = Linear(intermediate_size, hidden_size, bias)
        self.gate_up_proj: Linear | None = None  # set by layers.fusion for float weights
        self.activation = activation
        self.layer_ops: LayerOps = DEFAULT_LAYER_OPS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            # A backend's method may fuse the activation into the GEMM (the cuda backend's
            # GatedGemmMethod for prefill batches on Hopper); None: it does not here. The
            # fused module need not be a Linear (the C backend's multi-weight GGUF matmul).
            method = getattr(self.gate_up_proj, "method", None)
            fused = getattr(method, "apply_gated", None)
            out = fused(self.gate_up_proj, x, self.activation) if fused is not None else None
            if out is not None:
                return self.down_proj(out)
            gate_up = self.gate_up_proj(x)  # [T, 2 * inter]
        else:
            gate_up = torch.cat([self.gate_proj(x), self.up_proj(x)], dim=-1)
        return self.down_proj(self.layer_ops.act_and_mul(gate_up, self.activation))
