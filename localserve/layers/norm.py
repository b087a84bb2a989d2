"""RMSNorm over the last dimension, through the swappable `layer_ops.rms_norm`.

`offset` = 1 gives Gemma's norm, whose stored weight is a delta from one.
"""

from __future__ import annotations

import torch
from torch import nn

from localserve.layers.ops import DEFAULT_LAYER_OPS, LayerOps


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, offset: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim), requires_grad=False)
        self.eps = eps
        self.offset = offset
        self.layer_ops: LayerOps = DEFAULT_LAYER_OPS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Any leading shape and strides (q/k heads are views into the fused qkv output): the
        # kernels address rows themselves, so no copy is made here.
        out, _ = self.layer_ops.rms_norm(x, self.weight, self.eps, None, self.offset)
        return out

    def add_and_norm(self, x: torch.Tensor, residual: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual): the fused pre-norm residual add ([T, dim])."""
        out, summed = self.layer_ops.rms_norm(x, self.weight, self.eps, residual, self.offset)
        assert summed is not None
        return out, summed

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, offset={self.offset}"
