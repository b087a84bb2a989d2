"""Putting weights into a model built on the meta device (no second copy in memory).

Each loaded tensor replaces the meta parameter of the same name; raw GGUF rows go to the
layer through `set_quantized_weight`. Afterwards: embeddings tied, every parameter checked
to be real, each layer's method given `process_after_loading`, RoPE tables built.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from localserve.layers.embedding import VocabEmbedding
from localserve.layers.linear import Linear
from localserve.layers.rotary import RotaryEmbedding
from localserve.loader.gguf_loader import QuantizedWeight
from localserve.quant.gguf import set_quantized_weight


def assign_weights(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor |
                                                             QuantizedWeight]],
                   device: torch.device, dtype: torch.dtype, tie_word_embeddings: bool) -> None:
    """Moves each (name, tensor) into `model` (cast to `dtype`, on `device`)."""
    for name, value in weights:
        if tie_word_embeddings and name == "lm_head.weight":
            continue  # tied checkpoints sometimes store a copy; the embedding is the truth
        module_name, _, attr = name.rpartition(".")
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            raise ValueError(f"unexpected weight {name!r}: the model has no module "
                             f"{module_name!r} (wrong architecture or config?)") from None
        if isinstance(value, QuantizedWeight):
            if attr != "weight" or not isinstance(module, Linear | VocabEmbedding):
                raise ValueError(f"quantized tensor {name!r} does not belong to a linear layer")
            set_quantized_weight(module, value.raw.to(device), value.qtype, dtype)
            continue
        param = module._parameters.get(attr)
        if param is None and attr not in module._parameters:
            raise ValueError(f"unexpected weight {name!r} (the model has no such parameter)")
        if param is not None and tuple(param.shape) != tuple(value.shape):
            raise ValueError(f"weight {name!r} has shape {tuple(value.shape)}, the model "
                             f"expects {tuple(param.shape)} (config and weights disagree)")
        module._parameters[attr] = nn.Parameter(value.to(device=device, dtype=dtype),
                                                requires_grad=False)


def finish_loading(model: nn.Module, device: torch.device, dtype: torch.dtype,
                   tie_word_embeddings: bool) -> None:
    """Ties embeddings, checks nothing is left on meta, runs process_after_loading."""
    if tie_word_embeddings:
        tie_embeddings(model)
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    missing += [n for n, b in model.named_buffers() if b.is_meta]
    if missing:
        shown = ", ".join(missing[:8]) + (f" (+{len(missing) - 8} more)" if len(missing) > 8
                                          else "")
        raise ValueError(f"the checkpoint lacks {len(missing)} weights the model needs: {shown}")
    for module in model.modules():
        if isinstance(module, Linear | VocabEmbedding):
            module.method.process_after_loading(module)
        if isinstance(module, RotaryEmbedding):
            module.cos_sin(device)


def tie_embeddings(model: nn.Module) -> None:
    """lm_head shares the token embedding (float weight, or raw GGUF rows)."""
    embed = model.get_submodule("model.embed_tokens")
    head = model.get_submodule("lm_head")
    if hasattr(embed, "qweight"):
        set_quantized_weight(head, embed.qweight, embed.qtype, embed.compute_dtype)
    else:
        head._parameters["weight"] = embed.weight


def init_dummy_weights(model: nn.Module, device: torch.device, dtype: torch.dtype,
                       seed: int = 0, std: float = 0.02, skip: tuple[str, ...] = ()) -> None:
    """Random weights (for benchmarks with a real config): N(0, std) matrices and biases,
    norms at their identity value. Generated directly on `device`; `skip` names stay meta."""
    gen = torch.Generator(device=device).manual_seed(seed)
    for module_name, module in model.named_modules():
        for attr, param in list(module._parameters.items()):
            if param is None or not param.is_meta or f"{module_name}.{attr}" in skip:
                continue
            data = torch.empty(param.shape, device=device, dtype=dtype)
            if hasattr(module, "offset") and attr == "weight":  # RMSNorm
                data.fill_(1.0 - module.offset)
            else:
                data.normal_(0.0, std, generator=gen)
            module._parameters[attr] = nn.Parameter(data, requires_grad=False)


def count_params(model: nn.Module) -> int:
    """Logical parameter count (quantized layers counted by their float shape, ties once)."""
    seen: set[int] = set()
    seen_raw: set[int] = set()
    total = 0
    for module in model.modules():
        if isinstance(module, Linear | VocabEmbedding) and hasattr(module, "qweight"):
            key = module.qweight.data_ptr()
            if key not in seen_raw:
                seen_raw.add(key)
                if isinstance(module, Linear):
                    total += module.in_features * module.out_features
                else:
                    total += module.num_embeddings * module.embedding_dim
        for p in module._parameters.values():
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total
