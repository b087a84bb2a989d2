"""GGUF checkpoints on the GPU: layers keep llama.cpp's raw blocks (kernels/triton/gguf.py).

The loader hands every GGUF block tensor over raw (`layer.qweight`, `layer.qtype`,
`quant/gguf.py`); here each layer of a type the Triton kernels read gets their methods, and
a layer of any other type (Q4_1, Q5_1, Q2_K, Q3_K) is dequantized once, to a float weight that
the float paths (cuBLAS, the decode gemv) then serve. Projections that read one input fuse
when their parts share a type, as float ones do (`layers/fusion.py`): one launch, one stream
of blocks.

Blocks or floats (`keeps_gguf_blocks`, LOCALSERVE_GGUF_BLOCKS=auto|1|0): the blocks take a
third of the memory (a Q4_K_M 8B: 5.2 GB, not 16), and one-row decode steps run about as fast
from them as from bf16 (kernels/triton/gguf_gemv.py), but batched steps ran 2-3x slower
(`gguf_matmul`; docs/benchmarks.md, session 21; session 22's int8 kernel, gguf_q8.py, now
takes 2-32 rows). So by default (auto) a model keeps its blocks only when its dequantized
weights would take more than half of the GPU memory localserve may use: an 8B Q4_K_M on an
8 GB card runs from its blocks, on an 80 GB one from bf16.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from localserve.layers.embedding import UnquantizedEmbeddingMethod, VocabEmbedding
from localserve.layers.fusion import fused_linear, stacked_linear
from localserve.layers.linear import Linear, UnquantizedMethod
from localserve.layers.ops import LayerOps
from localserve.quant.gguf import dequantize, set_quantized_weight

if TYPE_CHECKING:  # Triton is imported where the kernels are first needed
    from localserve.kernels.triton.quantize import Q8


class Int8Activations:
    """Inputs of the int8 GGUF kernel rounded to int8 once, however many matmuls read them.

    A layer input is quantized by the RMSNorm or gated activation that produces it (their
    `_q8` kernels, which `layer_ops` installs) or else by the first matmul that reads it; the
    next matmul on the same tensor (q/k and v, or gate and up, kept apart by their types)
    finds it here. One tensor is remembered, by identity (the object is held, so its id is
    not reused): nothing writes a layer input after the layer reads it.
    """

    def __init__(self, device: torch.device) -> None:
        from localserve.kernels.triton.activation import act_and_mul_q8
        from localserve.kernels.triton.gguf_q8 import MAX_ROWS, int8_dots
        from localserve.kernels.triton.norm import MAX_FUSED_HIDDEN, rms_norm_q8
        from localserve.kernels.triton.quantize import QK, quantize_q8

        self.max_rows = MAX_ROWS if int8_dots(device) else 1  # 1: the int8 kernel is not used
        self._max_hidden, self._qk = MAX_FUSED_HIDDEN, QK
        self._quantize, self._rms_norm_q8, self._act_and_mul_q8 = (
            quantize_q8, rms_norm_q8, act_and_mul_q8)
        self._source: torch.Tensor | None = None
        self._q8: Q8 | None = None

    def of(self, x: torch.Tensor, rows: torch.Tensor) -> Q8:
        """x rounded to int8 (`rows`: x as [rows, K], contiguous)."""
        if x is not self._source:
            self._remember(x, self._quantize(rows))
        assert self._q8 is not None
        return self._q8

    def _remember(self, x: torch.Tensor, q8: Q8) -> None:
        self._source, self._q8 = x, q8

    def _takes(self, x: torch.Tensor, k: int) -> bool:
        """Whether x [rows, k] is an input the int8 kernel would read, worth quantizing."""
        return x.dim() == 2 and 2 <= x.shape[0] <= self.max_rows and k % self._qk == 0

    def layer_ops(self, base: LayerOps) -> LayerOps:
        """`base` with its RMSNorm and gated activation quantizing their outputs for the int8
        kernel when it will read them (2-D, 2 to max_rows rows), else `base`'s own."""

        def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
                     residual: torch.Tensor | None = None, weight_offset: float = 0.0
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
            if not self._takes(x, x.shape[-1]) or x.shape[-1] > self._max_hidden:
                return base.rms_norm(x, weight, eps, residual, weight_offset)
            out, summed, q8 = self._rms_norm_q8(x, weight, eps, residual, weight_offset)
            self._remember(out, q8)
            return out, summed

        def act_and_mul(x: torch.Tensor, activation: str) -> torch.Tensor:
            if not self._takes(x, x.shape[-1] // 2):
                return base.act_and_mul(x, activation)
            out, q8 = self._act_and_mul_q8(x, activation)
            self._remember(out, q8)
            return out

        return replace(base, rms_norm=rms_norm, act_and_mul=act_and_mul)


class TritonGGUFLinearMethod:
    """y = x W^T (+ b) straight from the raw blocks in `layer.qweight`: one row (batch-1
    decode) through the one-row kernel (kernels/triton/gguf_gemv.py), up to
    gguf_q8.MAX_ROWS through the int8 kernel (kernels/triton/gguf_q8.py: x rounded to int8
    first, as llama.cpp does, once for all the layers that read it: `activations`; not on
    Turing, which lacks its int8 dots), more through `gguf_linear`."""

    def __init__(self, device: torch.device, activations: Int8Activations | None = None
                 ) -> None:
        from localserve.kernels.triton.gguf import gguf_linear
        from localserve.kernels.triton.gguf_gemv import gguf_gemv
        from localserve.kernels.triton.gguf_q8 import gguf_q8_matmul

        # bound once: apply runs per step
        self._linear, self._gemv, self._q8 = gguf_linear, gguf_gemv, gguf_q8_matmul
        self.activations = activations or Int8Activations(device)

    def create_weights(self, layer: Linear) -> None:
        pass  # the loader sets qweight/qtype through set_quantized_weight

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        rows = x2.shape[0]
        if rows > self.activations.max_rows or rows == 0:
            return self._linear(x, layer.qweight, layer.qtype, layer.bias)
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        if rows == 1:
            y = self._gemv(x2, layer.qweight, layer.qtype)
        else:
            y = self._q8(x2, layer.qweight, layer.qtype, x_q8=self.activations.of(x, x2))
        y = y.reshape(*x.shape[:-1], y.shape[-1])
        return y if layer.bias is None else y + layer.bias

    def process_after_loading(self, layer: Linear) -> None:
        pass


class TritonGGUFEmbeddingMethod:
    """Dequantizes only the looked-up rows, on the GPU."""

    def __init__(self) -> None:
        from localserve.kernels.triton.gguf import gguf_dequant

        self._dequant = gguf_dequant

    def create_weights(self, layer: VocabEmbedding) -> None:
        pass

    def embed(self, layer: VocabEmbedding, ids: torch.Tensor) -> torch.Tensor:
        return self._dequant(layer.qweight, layer.qtype, layer.embedding_dim,
                             layer.compute_dtype, ids)

    def process_after_loading(self, layer: VocabEmbedding) -> None:
        pass


def gguf_fused_linear(parts: Sequence[Linear]) -> Linear | None:
    """One Linear over the parts' raw rows stacked, when all hold blocks of one type the
    kernels read (GGUF files often give v or down another type: those stay apart)."""
    if any(not isinstance(p.method, TritonGGUFLinearMethod) for p in parts):
        return None
    if len({p.qtype for p in parts}) != 1 or len({p.in_features for p in parts}) != 1:
        return None
    fused = stacked_linear(parts)
    if fused is not None:
        set_quantized_weight(fused, torch.cat([p.qweight for p in parts]), parts[0].qtype,
                             parts[0].compute_dtype)
        fused.method = TritonGGUFLinearMethod(fused.qweight.device, parts[0].method.activations)
    return fused


def cuda_fused_linear(parts: Sequence[Linear]) -> Linear | None:
    """`fuse_projections`' rule on this backend: float parts as everywhere, GGUF parts here."""
    return fused_linear(parts) or gguf_fused_linear(parts)


def gguf_layer_ops(model: nn.Module, base: LayerOps) -> LayerOps:
    """The layer ops for `model`: `base`, with the RMSNorm and activation quantizing their
    outputs (`Int8Activations.layer_ops`) where GGUF layers run the int8 kernel."""
    for module in model.modules():
        method = getattr(module, "method", None)
        if isinstance(method, TritonGGUFLinearMethod) and method.activations.max_rows > 1:
            return method.activations.layer_ops(base)
    return base


def reserve_gguf_scratch(model: nn.Module) -> None:
    """Sizes the one-row and int8 kernels' split-K scratch for every GGUF linear (after
    fusion), so that no launch allocates it during CUDA-graph capture."""
    from localserve.kernels.triton import gguf_gemv, gguf_q8

    for module in model.modules():
        if isinstance(module, Linear) and isinstance(module.method, TritonGGUFLinearMethod):
            device, n, k = module.qweight.device, module.out_features, module.in_features
            gguf_gemv.reserve_split_k(device, n, k, module.qtype)
            gguf_q8.reserve_split_k(device, n, k, module.qtype)


SETTINGS = ("auto", "1", "0")


def gguf_blocks_setting() -> str:
    """LOCALSERVE_GGUF_BLOCKS: "1" keeps GGUF blocks on the GPU, "0" dequantizes them at
    load, "auto" (the default) decides by size (`keeps_gguf_blocks`)."""
    value = os.environ.get("LOCALSERVE_GGUF_BLOCKS", "auto").strip().lower() or "auto"
    if value not in SETTINGS:
        raise ValueError(f"LOCALSERVE_GGUF_BLOCKS must be one of {', '.join(SETTINGS)}; "
                         f"got {value!r}")
    return value


def keeps_gguf_blocks(dequantized: int | None = None, budget: float | None = None) -> bool:
    """Whether GGUF layers keep their blocks: as LOCALSERVE_GGUF_BLOCKS says, or (auto) when
    the `dequantized` weights would take more than half of `budget`, the bytes of GPU memory
    localserve may use (the rest holds the KV cache and activations); see the module
    docstring for why."""
    setting = gguf_blocks_setting()
    if setting != "auto":
        return setting == "1"
    return dequantized is not None and budget is not None and dequantized > budget / 2


def install_gguf_methods(model: nn.Module, keep: bool | None = None) -> tuple[int, int]:
    """Points every raw GGUF layer at the Triton kernels when `keep` (default: the setting
    is "1"), or dequantizes it when not, or where they do not read its type; returns (kept
    raw, dequantized). A tied LM head shares its embedding's blocks, or its dequantized
    weight."""
    from localserve.kernels.triton.gguf import SUPPORTED_TYPES

    keep = keeps_gguf_blocks() if keep is None else keep
    kept = dequantized = 0
    floats: dict[int, nn.Parameter] = {}
    activations: Int8Activations | None = None  # one for the model
    for module in model.modules():
        if not isinstance(module, Linear | VocabEmbedding) or not hasattr(module, "qweight"):
            continue
        linear = isinstance(module, Linear)
        if keep and module.qtype in SUPPORTED_TYPES:
            if linear:
                activations = activations or Int8Activations(module.qweight.device)
                module.method = TritonGGUFLinearMethod(module.qweight.device, activations)
            else:
                module.method = TritonGGUFEmbeddingMethod()
            kept += 1
            continue
        raw = module.qweight
        key = raw.data_ptr()
        if key not in floats:
            weight = dequantize(raw, module.qtype).to(raw.device, module.compute_dtype)
            floats[key] = nn.Parameter(weight, requires_grad=False)
        del module._buffers["qweight"]
        del module.qtype
        module.weight = floats[key]
        module.method = UnquantizedMethod() if linear else UnquantizedEmbeddingMethod()
        dequantized += 1
    return kept, dequantized
