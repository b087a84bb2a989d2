"""Decode-sized matmuls through the Triton gemvs where they beat cuBLAS.

At decode a linear layer sees a handful of rows and streams its whole weight; cuBLAS tiles
some of those shapes poorly (a 4096 x 4096 projection runs on 64 of an H100's 132 SMs).

One row (batch-1 decode) goes through the vector gemv (kernels/triton/vector_gemv.py) for
every half-precision weight: `benchmarks/triton_kernels.py --only gemv` on the H100
(session 12) timed it faster than cuBLAS and the batched gemv on every Llama-3-8B shape,
the 235 MB gate_up included, and (a) ran at 185.0 / 185.1 tok/s against 172.0 with session
11's routing, on the same machine (docs/benchmarks.md).

2 to 8 rows: `--sweep --only gemv` (session 4) timed the batched gemv at 0.86-0.90x cuBLAS's
time on o_proj, 0.95-0.99x on qkv and down, 0.90-0.92x on the LM head, but 1.01-1.03x on the
gate_up. Hence the rule there: half-precision weights of at most 64 Mi elements or a
vocabulary-sized head. fp32 weights (reference checks) keep cuBLAS's exact fp32 path. Larger
batches are GEMMs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from localserve.layers.linear import Linear, LinearMethod, UnquantizedMethod
from localserve.layers.mlp import GatedMLP

MAX_GEMV_ROWS = 8
ONE_ROW_GEMV = True  # False: one row takes the 2..8-row route, as in session 11 (A/B variant)
MAX_GEMV_ELEMENTS = 64 * 2**20
MIN_HEAD_ROWS = 65536  # an LM head over a vocabulary: long, thin, many programs


def gemv_suits(weight: torch.Tensor) -> bool:
    n, k = weight.shape
    return (weight.dtype in (torch.float16, torch.bfloat16)
            and (n * k <= MAX_GEMV_ELEMENTS or n >= MIN_HEAD_ROWS))


class DecodeGemvMethod(UnquantizedMethod):
    """A half-precision weight at decode: one row through the vector gemv, 2 to MAX_GEMV_ROWS
    rows through the batched gemv where it suits the weight (`batched`), anything larger
    through F.linear (cuBLAS)."""

    def __init__(self, batched: bool = True) -> None:
        from localserve.kernels.triton.gemv import gemv
        from localserve.kernels.triton.vector_gemv import vector_gemv

        self.batched = batched
        self._gemv, self._vector_gemv = gemv, vector_gemv  # bound once: apply runs per layer

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        if ONE_ROW_GEMV and x.dim() == 2 and x.shape[0] == 1 and x.is_contiguous():
            return self._vector_gemv(x, layer.weight, layer.bias)
        if self.batched and x.dim() == 2 and x.shape[0] <= MAX_GEMV_ROWS:
            return self._gemv(x, layer.weight, layer.bias)
        return F.linear(x, layer.weight, layer.bias)


class GatedGemmMethod:
    """Wraps a bias-free fused gate|up Linear's method (`install_gated_gemm` checks): `apply`
    is the wrapped one's, and prefill-sized batches on Hopper get act(gate) * up from one
    Triton GEMM (`apply_gated`, which GatedMLP calls first; None: the wrapped method and
    act_and_mul do it)."""

    def __init__(self, inner: LinearMethod) -> None:
        from localserve.kernels.triton.gated_gemm import gated_gemm, gated_gemm_suits

        self.inner = inner
        self._gated_gemm, self._suits = gated_gemm, gated_gemm_suits

    def create_weights(self, layer: Linear) -> None:
        self.inner.create_weights(layer)

    def process_after_loading(self, layer: Linear) -> None:
        self.inner.process_after_loading(layer)

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        return self.inner.apply(layer, x)

    def apply_gated(self, layer: Linear, x: torch.Tensor, activation: str
                    ) -> torch.Tensor | None:
        if self._suits(x, layer.weight):
            return self._gated_gemm(x, layer.weight, activation)
        return None


def install_gated_gemm(model: nn.Module) -> int:
    """Gives every fused float gate|up projection of a GatedMLP with a gated activation the
    Triton kernels know a GatedGemmMethod; returns how many."""
    from localserve.kernels.triton.activation import ACTIVATIONS

    count = 0
    for module in model.modules():
        proj = getattr(module, "gate_up_proj", None)
        if (isinstance(module, GatedMLP) and isinstance(proj, Linear)
                and module.activation in ACTIVATIONS and proj.bias is None
                and isinstance(proj.method, UnquantizedMethod)
                and proj.weight.dtype in (torch.float16, torch.bfloat16)):
            proj.method = GatedGemmMethod(proj.method)
            count += 1
    return count


def install_decode_gemv(model: nn.Module) -> int:
    """Gives every half-precision float Linear a DecodeGemvMethod (batched where the weight
    suits the batched gemv); returns how many (after fusion, so fused q/k/v and gate/up are
    judged as one weight)."""
    count = 0
    for module in model.modules():
        if (isinstance(module, Linear) and type(module.method) is UnquantizedMethod
                and module.weight.dtype in (torch.float16, torch.bfloat16)):
            module.method = DecodeGemvMethod(batched=gemv_suits(module.weight))
            count += 1
    return count
