"""load_model: a ModelConfig in, a ready nn.Module (+ its hyper-parameters and spec) out.

The model is built on the meta device and each weight is assigned as it is read, so peak
memory is one copy of the weights plus one tensor in flight.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

from localserve.config import ModelConfig, default_model_path
from localserve.interfaces import ModelSpec
from localserve.loader.source import CheckpointSource, resolve_source
from localserve.models.arch import ModelArchConfig, arch_from_hf_config
from localserve.models.registry import get_model_class

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


@dataclass
class LoadedModel:
    model: nn.Module
    arch: ModelArchConfig
    spec: ModelSpec
    tokenizer_source: str  # the .gguf file or HF folder to give load_tokenizer
    source: CheckpointSource
    dtype: torch.dtype  # of the weights and activations


def resolve_dtype(name: str, device: torch.device,
                  arch: ModelArchConfig | None = None) -> torch.dtype:
    """"auto": float32 on the CPU (the reference path), bf16 on GPUs with bf16 hardware, fp16
    on the others (NVIDIA Turing and older) unless the model overflows fp16 (Gemma 3): fp32.
    An explicit float16 for such a model is refused (it would decode garbage)."""
    if name != "auto":
        if name not in _DTYPES:
            raise ValueError(f"unknown dtype {name!r}; use auto, float32, bfloat16 or float16")
        if _DTYPES[name] is torch.float16 and arch is not None and arch.overflows_fp16:
            raise ValueError(f"{arch.model_type} overflows float16 (its activations exceed "
                             "65,504 and decode as NaN): use --dtype bfloat16 or float32")
        return _DTYPES[name]
    if device.type == "cuda":
        if _native_bf16(device):
            return torch.bfloat16
        return torch.float32 if arch is not None and arch.overflows_fp16 else torch.float16
    return torch.float32


def _native_bf16(device: torch.device) -> bool:
    """NVIDIA Ampere (sm_80) and newer, and the AMD GPUs ROCm serves. Not
    torch.cuda.is_bf16_supported(): it says yes on Turing too, where bf16 is only emulated
    (slow GEMMs, and no bf16 tensor-core dots for the Triton kernels)."""
    if torch.version.hip is not None:
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


def read_arch(source: CheckpointSource) -> ModelArchConfig:
    """The hyper-parameters of a checkpoint, without reading any weights."""
    if source.path.endswith(".gguf") or source.kind == "gguf":
        from localserve.loader.gguf_loader import arch_from_gguf
        from localserve.loader.gguf_reader import GGUFFile

        return arch_from_gguf(GGUFFile(source.path))
    return arch_from_hf_config(source.hf_config())


def load_model(model_config: ModelConfig, device: torch.device,
               dtype: torch.dtype | None = None, keep_quantized: bool = False) -> LoadedModel:
    """Loads the model named by `model_config` onto `device`.

    Args:
        model_config: `model` is a .gguf file or an HF folder (None: the default model);
            `load_format` auto | gguf | safetensors | dummy; `dtype` is used when `dtype`
            is None.
        device: where the weights go.
        dtype: activation/weight dtype; None resolves `model_config.dtype` for the device and
            the model (`resolve_dtype`).
        keep_quantized: GGUF block tensors stay raw in `layer.qweight`/`layer.qtype` (with a
            reference GGUF method that a backend may replace) instead of being dequantized.
    Returns:
        LoadedModel with the eval-mode model, its ModelArchConfig and ModelSpec.
    """
    path = model_config.model or default_model_path()
    source = resolve_source(path, model_config.load_format)
    start = time.perf_counter()
    quantization: str | None = None
    if source.kind == "gguf":
        from localserve.loader.gguf_loader import (
            arch_from_gguf,
            gguf_quantization,
            iter_gguf_weights,
        )
        from localserve.loader.gguf_reader import GGUFFile
        from localserve.quant.gguf import FLOAT_TYPES

        gguf = GGUFFile(source.path)
        arch = arch_from_gguf(gguf)
        model = _build(arch)
        weights = iter_gguf_weights(gguf, arch, keep_quantized)
        if any(info.qtype not in FLOAT_TYPES for info in gguf.tensors.values()):
            quantization = gguf_quantization(gguf)
    else:
        arch = read_arch(source)
        model = _build(arch)
        weights = None
        if source.kind == "safetensors":
            from localserve.loader.safetensors_loader import iter_safetensors_weights

            weights = iter_safetensors_weights(source.weight_files)

    dtype = dtype or resolve_dtype(model_config.dtype, device, arch)
    from localserve.loader.weights import (
        assign_weights,
        count_params,
        finish_loading,
        init_dummy_weights,
    )

    if weights is None:
        skip = ("lm_head.weight",) if arch.tie_word_embeddings else ()
        init_dummy_weights(model, device, dtype, model_config.seed, skip=skip)
    else:
        assign_weights(model, weights, device, dtype, arch.tie_word_embeddings)
    finish_loading(model, device, dtype, arch.tie_word_embeddings)
    model.eval()
    spec = ModelSpec(
        architecture=arch.model_type, num_layers=arch.num_layers,
        num_kv_heads=arch.num_kv_heads, head_dim=arch.head_dim, vocab_size=arch.vocab_size,
        max_position_embeddings=arch.max_position_embeddings,
        dtype=str(dtype).removeprefix("torch."), quantization=quantization,
        sliding_window=arch.effective_sliding_window, num_params=count_params(model))
    log.info("loaded %s (%s, %s, %.0fM params) from %s in %.1fs", arch.model_type, source.kind,
             spec.dtype, spec.num_params / 1e6, source.path, time.perf_counter() - start)
    return LoadedModel(model, arch, spec, source.path, source, dtype)


def _build(arch: ModelArchConfig) -> nn.Module:
    cls = get_model_class(arch.model_type)
    with torch.device("meta"):
        return cls(arch)
