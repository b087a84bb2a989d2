"""Fused q/k/v and gate/up projections compute exactly what the separate ones did."""

from __future__ import annotations

import pytest
import torch

from localserve.config import ModelConfig
from localserve.layers.fusion import fuse_projections
from localserve.loader import load_model
from localserve.runner.context import (
    AttentionMetadata,
    ForwardContext,
    ReferenceAttentionOps,
    forward_context,
)
from tests.helpers.tiny_models import make_tiny_checkpoint


def logits(model, arch, ids):
    n = len(ids)
    caches = [(torch.zeros(4, 16, arch.num_kv_heads, arch.head_dim),
               torch.zeros(4, 16, arch.num_kv_heads, arch.head_dim))
              for _ in range(arch.num_layers)]
    meta = AttentionMetadata(torch.arange(n), torch.arange(4, dtype=torch.int32)[None],
                             torch.tensor([0, n], dtype=torch.int32),
                             torch.tensor([n], dtype=torch.int32), n, n)
    with torch.no_grad(), forward_context(ForwardContext(meta, caches, ReferenceAttentionOps())):
        hidden = model(torch.tensor(ids), torch.arange(n))
    return model.compute_logits(hidden)


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gemma3_text"])
def test_fused_projections_match(tmp_path, model_type):
    ckpt = make_tiny_checkpoint(tmp_path, model_type, "safetensors")
    loaded = load_model(ModelConfig(model=str(ckpt.path)), torch.device("cpu"), torch.float32)
    ids = [3, 9, 27, 81, 243 % 512, 7, 11]
    before = logits(loaded.model, loaded.arch, ids)
    fused = fuse_projections(loaded.model)
    assert fused == 2 * loaded.arch.num_layers
    assert not any(hasattr(m, "q_proj") for m in loaded.model.modules())
    after = logits(loaded.model, loaded.arch, ids)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_quantized_layers_do_not_fuse(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path, "llama", "gguf-q8_0")
    loaded = load_model(ModelConfig(model=str(ckpt.path)), torch.device("cpu"), torch.float32,
                        keep_quantized=True)
    quantized = sum(hasattr(m, "qweight") for m in loaded.model.modules())
    assert quantized > 0
    fuse_projections(loaded.model)
    assert sum(hasattr(m, "qweight") for m in loaded.model.modules()) == quantized
