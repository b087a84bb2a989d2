"""Linear, embedding, attention and element-wise ops backed by the C kernels.

GGUF weights stay in their raw blocks (`layer.qweight`): the C matmul reads them directly,
quantizing activations on the fly, so no dequantized copy of the model ever exists.
"""

from __future__ import annotations

import torch
from torch import nn

from localserve.layers.ops import LayerOps
from localserve.runner.context import KernelAttentionOps


class CGGUFLinearMethod:
    """y = x @ W^T with W the raw GGUF rows of `layer.qweight`."""

    def __init__(self, layer: nn.Module):
        from localserve.kernels.cpu import prepare_weight

        self.weight = prepare_weight(layer.qweight, layer.qtype, layer.out_features)

    def create_weights(self, layer: nn.Module) -> None:
        pass

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        from localserve.kernels.cpu import gguf_matmul

        y = gguf_matmul(x.float(), self.weight)
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


def c_attention_ops() -> KernelAttentionOps:
    from localserve.kernels import cpu

    return KernelAttentionOps(cpu)


def c_layer_ops() -> LayerOps:
    from localserve.kernels import reference
    from localserve.kernels.cpu import act_and_mul, rms_norm

    return LayerOps(rms_norm=rms_norm, rotary_embedding=reference.rotary_embedding,
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
