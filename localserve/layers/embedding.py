"""Token embedding with a pluggable method (float table, or raw GGUF rows dequantized on lookup).

Methods follow the same idea as `localserve.layers.linear`: the attributes they may rely on
are `num_embeddings`, `embedding_dim`, and what their `create_weights` / the loader set.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn


@runtime_checkable
class EmbeddingMethod(Protocol):
    def create_weights(self, layer: VocabEmbedding) -> None: ...

    def embed(self, layer: VocabEmbedding, ids: torch.Tensor) -> torch.Tensor:
        """ids [T] int64 -> [T, embedding_dim] in the model dtype."""

    def process_after_loading(self, layer: VocabEmbedding) -> None: ...


class UnquantizedEmbeddingMethod:
    def create_weights(self, layer: VocabEmbedding) -> None:
        layer.weight = nn.Parameter(torch.empty(layer.num_embeddings, layer.embedding_dim),
                                    requires_grad=False)

    def embed(self, layer: VocabEmbedding, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, layer.weight)

    def process_after_loading(self, layer: VocabEmbedding) -> None:
        pass


class VocabEmbedding(nn.Module):
    """Token embedding table [num_embeddings, embedding_dim] with a pluggable method."""

    def __init__(self, num_embeddings: int, embedding_dim: int,
                 method: EmbeddingMethod | None = None) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.method: EmbeddingMethod = method or UnquantizedEmbeddingMethod()
        self.method.create_weights(self)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.method.embed(self, ids)

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, "
                f"method={type(self.method).__name__}")
