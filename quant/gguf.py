"""GGUF block types: which we read, how to dequantize them, and the keep-quantized methods.

GGUF is a container, not a method: its tensors come in float types (F32/F16/BF16) or in
llama.cpp's block types. The loader either dequantizes a block tensor to a float weight
(the reference path) or, with `keep_quantized=True`, hands the raw rows to the layer:
`layer.qweight` (uint8 [rows, row_bytes], a buffer) and `layer.qtype` (a ggml type id), with
`GGUFLinearMethod` / `GGUFEmbeddingMethod` installed. Those methods dequantize on every call
(slow, obviously correct); a backend with real kernels (the C one) installs its own methods
reading the same two attributes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as _gguf_dequantize
from torch import nn

Q = GGMLQuantizationType
FLOAT_TYPES: frozenset[int] = frozenset({Q.F32, Q.F16, Q.BF16})
BLOCK_TYPES: frozenset[int] = frozenset({Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0,
                                         Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K})
SUPPORTED_TYPES: frozenset[int] = FLOAT_TYPES | BLOCK_TYPES


def type_name(qtype: int) -> str:
    try:
        return Q(qtype).name
    except ValueError:
        return f"ggml type {qtype}"


def supported_type_names() -> str:
    return ", ".join(type_name(t) for t in sorted(SUPPORTED_TYPES))


def gguf_tensor_types(path: str) -> dict[str, int]:
    """{tensor name: ggml type} of a GGUF file, from its header only (for backend checks)."""
    from localserve.loader.gguf_reader import GGUFFile

    gguf = GGUFFile(path)
    try:
        return {name: info.qtype for name, info in gguf.tensors.items()}
    finally:
        gguf.close()


def row_bytes(qtype: int, in_features: int) -> int:
    """Bytes of one row of `in_features` values stored as `qtype`."""
    block, size = GGML_QUANT_SIZES[Q(qtype)]
    if in_features % block:
        raise ValueError(f"{type_name(qtype)} rows hold multiples of {block} values, "
                         f"not {in_features}")
    return in_features // block * size


def dequantize(raw: np.ndarray | torch.Tensor, qtype: int) -> torch.Tensor:
    """Raw GGUF rows (uint8 [..., row_bytes]) -> float32 [..., in_features] on the CPU."""
    if qtype not in BLOCK_TYPES:
        raise ValueError(f"cannot dequantize {type_name(qtype)}; block types: "
                         f"{', '.join(type_name(t) for t in sorted(BLOCK_TYPES))}")
    if isinstance(raw, torch.Tensor):
        raw = raw.detach().cpu().numpy()
    out = _gguf_dequantize(np.ascontiguousarray(raw), Q(qtype))
    return torch.from_numpy(np.asarray(out, dtype=np.float32))


def set_quantized_weight(layer: nn.Module, raw: torch.Tensor, qtype: int,
                         compute_dtype: torch.dtype) -> None:
    """Replaces `layer.weight` by raw GGUF rows and installs the matching GGUF method.

    `layer` is a `localserve.layers.linear.Linear` or `localserve.layers.embedding.
    VocabEmbedding`; `raw` is uint8 [rows, row_bytes]; `compute_dtype` is the dtype of the
    activations the layer produces.
    """
    from localserve.layers.embedding import VocabEmbedding
    from localserve.layers.linear import Linear

    if qtype not in BLOCK_TYPES:
        raise ValueError(f"{type_name(qtype)} is not a GGUF block type")
    if isinstance(layer, Linear):
        rows, cols, method = layer.out_features, layer.in_features, GGUFLinearMethod()
    elif isinstance(layer, VocabEmbedding):
        rows, cols = layer.num_embeddings, layer.embedding_dim
        method = GGUFEmbeddingMethod()  # type: ignore[assignment]
    else:
        raise TypeError(f"cannot keep a quantized weight in {type(layer).__name__}")
    expected = (rows, row_bytes(qtype, cols))
    if tuple(raw.shape) != expected or raw.dtype != torch.uint8:
        raise ValueError(f"raw {type_name(qtype)} weight is {raw.dtype}{tuple(raw.shape)}, "
                         f"expected uint8{expected}")
    if "weight" in layer._parameters:
        del layer._parameters["weight"]
    layer.register_buffer("qweight", raw, persistent=False)
    layer.qtype = int(qtype)
    layer.compute_dtype = compute_dtype
    layer.method = method


class GGUFLinearMethod:
    """Reference keep-quantized linear: dequantizes `layer.qweight` on every call."""

    def create_weights(self, layer: nn.Module) -> None:
        pass  # the loader sets qweight/qtype through set_quantized_weight

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        weight = dequantize(layer.qweight, layer.qtype).to(device=x.device, dtype=x.dtype)
        return F.linear(x, weight, layer.bias)

    def process_after_loading(self, layer: nn.Module) -> None:
        pass


class GGUFEmbeddingMethod:
    """Keep-quantized embedding: dequantizes only the looked-up rows."""

    def create_weights(self, layer: nn.Module) -> None:
        pass

    def embed(self, layer: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        rows = layer.qweight[ids.to(layer.qweight.device).long()]  # [T, row_bytes]
        out = dequantize(rows, layer.qtype)  # [T, embedding_dim]
        return out.to(device=ids.device, dtype=layer.compute_dtype)

    def process_after_loading(self, layer: nn.Module) -> None:
        pass
