"""Which model class serves which architecture (config.json `model_type` or GGUF arch).

Model modules are imported lazily so that looking up a name costs nothing.
"""

from __future__ import annotations

import importlib

from torch import nn

# model_type -> (module, class)
_MODELS: dict[str, tuple[str, str]] = {
    "llama": ("localserve.models.llama", "LlamaForCausalLM"),
    "mistral": ("localserve.models.llama", "LlamaForCausalLM"),
    "qwen2": ("localserve.models.llama", "LlamaForCausalLM"),
    "qwen3": ("localserve.models.llama", "LlamaForCausalLM"),
    "gemma3_text": ("localserve.models.gemma3", "Gemma3ForCausalLM"),
}
# config.json model_types that name a supported text model under another key.
_ALIASES = {"gemma3": "gemma3_text"}
# general.architecture of a GGUF -> model_type (llama.cpp writes Mistral 7B as "llama").
GGUF_ARCHITECTURES: dict[str, str] = {
    "llama": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma3": "gemma3_text",
}

SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(sorted({*_MODELS, *_ALIASES}))


def get_model_class(model_type: str) -> type[nn.Module]:
    """The nn.Module class for `model_type`; ValueError listing the supported ones otherwise."""
    key = _ALIASES.get(model_type, model_type)
    if key not in _MODELS:
        raise ValueError(f"unsupported model architecture {model_type!r}; supported: "
                         f"{', '.join(SUPPORTED_ARCHITECTURES)}")
    module, name = _MODELS[key]
    return getattr(importlib.import_module(module), name)
