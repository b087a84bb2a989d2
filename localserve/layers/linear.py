"""Linear layers whose math is delegated to a per-layer method object.

A method creates the layer's weights and applies them. The default keeps a float weight
(`UnquantizedMethod`); quantized formats (GGUF blocks kept raw, AWQ, ...) install their own,
so a backend swaps kernels per layer without forking the model files. The attributes a
method may rely on: `in_features`, `out_features`, `bias` (a Parameter or None), and
whatever its `create_weights` / the loader put there. A fused gate|up projection's method may
also offer `apply_gated(layer, x, activation)` -> act(gate) * up, or None where it does not
apply (GatedMLP calls it first).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn


@runtime_checkable
class LinearMethod(Protocol):
    def create_weights(self, layer: Linear) -> None:
        """Registers the layer's weight tensors (on the current default device)."""

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        """x [..., in_features] -> [..., out_features]."""

    def process_after_loading(self, layer: Linear) -> None:
        """Repacks loaded weights for the kernel (called once, after all weights are set)."""


class UnquantizedMethod:
    """A float weight [out_features, in_features] and F.linear."""

    def create_weights(self, layer: Linear) -> None:
        layer.weight = nn.Parameter(torch.empty(layer.out_features, layer.in_features),
                                    requires_grad=False)

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, layer.weight, layer.bias)

    def process_after_loading(self, layer: Linear) -> None:
        pass


class Linear(nn.Module):
    """y = x W^T (+ b), with W held and applied by `self.method`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 method: LinearMethod | None = None) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.bias = (nn.Parameter(torch.empty(out_features), requires_grad=False)
                     if bias else None)
        self.method: LinearMethod = method or UnquantizedMethod()
        self.method.create_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.apply(self, x)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}, "
                f"method={type(self.method).__name__}")
