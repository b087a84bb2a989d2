"""Swappable element-wise ops of the shared layers (RMSNorm, RoPE, activation-and-multiply).

Each layer that computes one of these holds a `layer_ops` reference; a backend installs its
kernels for a whole model with `install_layer_ops(model, LayerOps(...))`. The signatures are
those of `localserve.kernels.reference`, so the Triton/C kernels (which mirror it) drop in.
Attention and linear layers are swapped elsewhere: through `ForwardContext.ops` and each
`Linear.method`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from localserve.kernels import reference

# rms_norm(x, weight, eps, residual, weight_offset) -> (normed, x + residual | None)
RmsNormFn = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]
# rotary_embedding(positions [T], q [T, nh, hd], k [T, kvh, hd], cos_sin [P, rot]) -> (q, k)
RotaryFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                    tuple[torch.Tensor, torch.Tensor]]
# act_and_mul(x [..., 2d], activation) -> [..., d]
ActAndMulFn = Callable[[torch.Tensor, str], torch.Tensor]


@dataclass(frozen=True)
class LayerOps:
    """The kernels the shared layers call; defaults are the plain-torch references."""

    rms_norm: RmsNormFn = reference.rms_norm
    rotary_embedding: RotaryFn = reference.rotary_embedding
    act_and_mul: ActAndMulFn = reference.act_and_mul


DEFAULT_LAYER_OPS = LayerOps()


def install_layer_ops(model: nn.Module, ops: LayerOps) -> int:
    """Points every layer of `model` that uses layer ops at `ops`; returns how many."""
    count = 0
    for module in model.modules():
        if hasattr(module, "layer_ops"):
            module.layer_ops = ops
            count += 1
    return count
