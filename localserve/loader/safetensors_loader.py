"""HF safetensors folders: tensors read shard by shard, names mapped to our modules.

Our parameter names are HF's, so the only renaming is for Gemma 3's multimodal checkpoints
(`language_model.` / `model.language_model.` prefixes); their vision tower is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from safetensors import safe_open

_SKIP_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                  "model.multi_modal_projector.")
_RENAMES = (("model.language_model.", "model."), ("language_model.model.", "model."),
            ("language_model.lm_head.", "lm_head."))


def hf_to_our_name(name: str) -> str | None:
    """Our parameter name for an HF tensor name, or None for tensors we do not use."""
    if name.startswith(_SKIP_PREFIXES) or name.endswith(".rotary_emb.inv_freq"):
        return None
    for old, new in _RENAMES:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def iter_safetensors_weights(files: tuple[str, ...]) -> Iterator[tuple[str, torch.Tensor]]:
    """(our name, tensor in its stored dtype, on the CPU) for every tensor of every shard."""
    for path in files:
        with safe_open(path, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                ours = hf_to_our_name(name)
                if ours is not None:
                    yield ours, f.get_tensor(name)
