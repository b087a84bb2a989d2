"""Linear, embedding, attention and element-wise ops backed by the C kernels.

GGUF weights stay in their raw blocks (`layer.qweight`): the C matmul reads them directly,
quantizing activations on the fly, so no dequantized copy of the model ever exists.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from localserve.layers.ops import LayerOps
from localserve.runner.context import KernelAttentionOps


class CGGUFLinearMethod:
    """y = x @ W^T with W the raw GGUF rows of `layer.qweight`."""

    def __init__(self, layer: nn.Module):
        from localserve.kernels.cpu import gguf_matmul, prepare_weight

        self.weight = prepare_weight(layer.qweight, layer.qtype, layer.out_features)
        self._matmul = gguf_matmul  # bound once: apply runs per layer per step

    def create_weights(self, layer: nn.Module) -> None:
        pass

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        y = self._matmul(x.float(), self.weight)
        if layer.bias is not None:
            y += layer.bias
        return y

    def process_after_loading(self, layer: nn.Module) -> None:
        pass


class CGGUFEmbeddingMethod:
    """Dequantizes only the looked-up rows of the raw GGUF table."""

    def __init__(self, layer: nn.Module):
        from localserve.kernels.cpu import prepare_weight

        self.weight = prepare_weight(layer.qweight, layer.qtype, layer.num_embeddings)

    def create_weights(self, layer: nn.Module) -> None:
        pass

    def embed(self, layer: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        from localserve.kernels.cpu import embedding

        return embedding(ids, self.weight)

    def process_after_loading(self, layer: nn.Module) -> None:
        pass


class CFusedGGUFLinear(nn.Module):
    """Projections that read the same input (q/k/v, gate/up) in one C call: the activations
    are quantized once and one parallel region covers every weight. Output: the parts'
    outputs concatenated, as `layers.fusion` lays them out for float weights."""

    def __init__(self, parts: Sequence[nn.Module]):
        from localserve.kernels.cpu import gguf_matmul_multi

        super().__init__()
        self.parts = nn.ModuleList(parts)  # keeps the raw GGUF buffers the weights point at
        self.weights = [p.method.weight for p in parts]
        self.out_features = sum(w.out_features for w in self.weights)
        self._matmul = gguf_matmul_multi  # bound once: forward runs per layer per step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self._matmul(x.float(), self.weights), dim=-1)


def c_fused_linear(parts: Sequence[nn.Module]) -> CFusedGGUFLinear | None:
    """For `layers.fusion.fuse_projections`: parts that all run through CGGUFLinearMethod
    without bias fuse, whatever GGUF types they have."""
    if any(type(p.method) is not CGGUFLinearMethod or p.bias is not None for p in parts):
        return None
    return CFusedGGUFLinear(parts)


def c_attention_ops() -> KernelAttentionOps:
    from localserve.kernels import cpu

    return KernelAttentionOps(cpu)


def c_layer_ops() -> LayerOps:
    from localserve.kernels.cpu import act_and_mul, rms_norm, rotary_embedding

    return LayerOps(rms_norm=rms_norm, rotary_embedding=rotary_embedding,
                    act_and_mul=act_and_mul)


def install_c_methods(model: nn.Module) -> int:
    """Points every raw-GGUF linear and embedding at the C kernels; returns how many."""
    from localserve.layers.embedding import VocabEmbedding
    from localserve.layers.linear import Linear

    count = 0
    for module in model.modules():
        if not hasattr(module, "qweight"):
            continue
        if isinstance(module, Linear):
            module.method = CGGUFLinearMethod(module)
        elif isinstance(module, VocabEmbedding):
            module.method = CGGUFEmbeddingMethod(module)
        else:
            continue
        count += 1
    return count
