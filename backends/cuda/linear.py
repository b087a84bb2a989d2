"""Decode-sized matmuls through the Triton gemv where it beats cuBLAS.

At decode a linear layer sees a handful of rows and streams its whole weight; cuBLAS tiles
some of those shapes poorly (a 4096 x 4096 projection runs on 64 of an H100's 132 SMs).
`benchmarks/triton_kernels.py --sweep --only gemv` on the H100 (CUDA-graph replays, weights
rotated past L2), at 1 to 8 rows: gemv took 0.86-0.90x cuBLAS's time on Llama-3-8B's
o_proj, 0.95-0.99x on qkv and down, 0.90-0.92x on the LM head, but 1.01-1.03x on the 235 MB
gate_up. Hence the rule:
up to 8 rows, half-precision weights of at most 64 Mi elements or a vocabulary-sized head.
fp32 weights (reference checks) keep cuBLAS's exact fp32 path. Larger batches are GEMMs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from localserve.layers.linear import Linear, UnquantizedMethod
from localserve.layers.norm import RMSNorm

MAX_GEMV_ROWS = 8
MAX_GEMV_ELEMENTS = 64 * 2**20
MIN_HEAD_ROWS = 65536  # an LM head over a vocabulary: long, thin, many programs


def gemv_suits(weight: torch.Tensor) -> bool:
    n, k = weight.shape
    return (weight.dtype in (torch.float16, torch.bfloat16)
            and (n * k <= MAX_GEMV_ELEMENTS or n >= MIN_HEAD_ROWS))


class DecodeGemvMethod(UnquantizedMethod):
    """A float weight applied by the Triton gemv for <= MAX_GEMV_ROWS rows, else F.linear;
    with the residual add and RMSNorm after it in the same launch where the model asks
    (`apply_add_norm`)."""

    def __init__(self, device: torch.device) -> None:
        from localserve.kernels.triton.gemv import (
            MAX_NORM_WIDTH,
            arrival_counter,
            gemv,
            gemv_add_norm,
        )

        self._gemv = gemv  # bound once: apply runs per layer per step
        self._gemv_add_norm = gemv_add_norm
        self._max_norm_width = MAX_NORM_WIDTH
        self._arrived = arrival_counter(device)

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 and x.shape[0] <= MAX_GEMV_ROWS:
            return self._gemv(x, layer.weight, layer.bias)
        return F.linear(x, layer.weight, layer.bias)

    def apply_add_norm(self, layer: Linear, x: torch.Tensor, residual: torch.Tensor,
                       norm: RMSNorm) -> tuple[torch.Tensor, torch.Tensor] | None:
        """norm.add_and_norm(layer(x), residual) in one launch, or None (larger batches,
        rows wider than one program holds)."""
        if (x.dim() != 2 or x.shape[0] > MAX_GEMV_ROWS
                or layer.out_features > self._max_norm_width
                or residual.dtype != x.dtype):
            return None
        return self._gemv_add_norm(x, layer.weight, residual, norm.weight, norm.eps,
                                   self._arrived, layer.bias, norm.offset)


def install_decode_gemv(model: nn.Module) -> int:
    """Gives every float Linear whose weight suits the gemv a DecodeGemvMethod; returns how
    many (after fusion, so fused q/k/v and gate/up are judged as one weight)."""
    count = 0
    for module in model.modules():
        if (isinstance(module, Linear) and type(module.method) is UnquantizedMethod
                and gemv_suits(module.weight)):
            module.method = DecodeGemvMethod(module.weight.device)
            count += 1
    return count
