"""The C backend's one-call decoder layers (backends/cpu/decoder_layer.py) against its
module path on tiny random GGUF models: the same kernels in the same order, so the logits
must be bit-identical through prefill, chunked prefill, decode and a prefix hit batched with a
decode step. Layers the C layer cannot express keep the module path."""

from __future__ import annotations

import pytest
import torch

from localserve.backends.cpu.decoder_layer import CDecoderLayer
from localserve.backends.cpu.methods import c_attention_ops
from localserve.backends.cpu.runner import install_c_kernels
from localserve.config import ModelConfig
from localserve.kernels.cpu import available
from localserve.loader import load_model
from tests.helpers.paged import Chunk, PagedDriver
from tests.helpers.tiny_models import VOCAB, make_tiny_checkpoint

pytestmark = pytest.mark.skipif(not available(), reason="the C kernels could not be built here")

# qwen2 has q/k/v biases: its layers stay on the module path.
EXPECTED_LAYERS = {"llama": True, "mistral": True, "qwen3": True, "gemma3_text": True,
                   "qwen2": False}


def c_model(path: str, whole_layers: bool):
    loaded = load_model(ModelConfig(model=path), torch.device("cpu"), torch.float32,
                        keep_quantized=True)
    _, _, count = install_c_kernels(loaded.model, layer_calls=whole_layers)
    return loaded.model, loaded.arch, count


def run_steps(model, arch, kv_dtype: torch.dtype) -> torch.Tensor:
    """Chunked prefill of A, decode steps, then B (sharing A's first blocks) batched with A."""
    g = torch.Generator().manual_seed(7)
    a = torch.randint(3, VOCAB, (21,), generator=g).tolist()
    driver = PagedDriver(model, arch, dtype=kv_dtype, ops=c_attention_ops())
    table_a = driver.alloc(32)
    rows = [driver.step([Chunk(a[:9], 0, table_a)]), driver.step([Chunk(a[9:], 9, table_a)])]
    pos = len(a)
    for _ in range(4):
        token = int(rows[-1][-1].argmax())
        rows.append(driver.step([Chunk([token], pos, table_a)]))
        pos += 1
    b_shared = 2  # B reuses A's first two blocks (8 tokens) and computes the rest
    b = a[:8] + torch.randint(3, VOCAB, (6,), generator=g).tolist()
    table_b = table_a[:b_shared] + driver.alloc(16)
    token = int(rows[-1][-1].argmax())
    rows.append(driver.step([Chunk([token], pos, table_a), Chunk(b[8:], 8, table_b)]))
    return torch.cat(rows)


@pytest.mark.parametrize("arch", sorted(EXPECTED_LAYERS))
@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.float16])
def test_one_call_layers_equal_the_module_path(tmp_path, arch, kv_dtype):
    ckpt = make_tiny_checkpoint(tmp_path, arch, "gguf-q8_0")
    modules, arch_cfg, _ = c_model(str(ckpt.path), whole_layers=False)
    whole, _, count = c_model(str(ckpt.path), whole_layers=True)
    assert not any(isinstance(m, CDecoderLayer) for m in modules.model.layers)
    assert count == (arch_cfg.num_layers if EXPECTED_LAYERS[arch] else 0)
    assert all(isinstance(m, CDecoderLayer) == EXPECTED_LAYERS[arch]
               for m in whole.model.layers)
    ref = run_steps(modules, arch_cfg, kv_dtype)
    ours = run_steps(whole, arch_cfg, kv_dtype)
    assert torch.isfinite(ref).all()
    assert torch.equal(ours, ref), (ours - ref).abs().max()


@pytest.mark.parametrize("arch", ["gemma3_text", "qwen3"])
def test_equal_on_every_simd_path(tmp_path, arch, isa):
    """The same equality with each SIMD path of this CPU forced (`isa` fixture)."""
    ckpt = make_tiny_checkpoint(tmp_path, arch, "gguf-q8_0")
    modules, arch_cfg, _ = c_model(str(ckpt.path), whole_layers=False)
    whole, _, _ = c_model(str(ckpt.path), whole_layers=True)
    assert torch.equal(run_steps(whole, arch_cfg, torch.float32),
                       run_steps(modules, arch_cfg, torch.float32))


def test_bad_step_is_a_clear_error(tmp_path):
    """A slot past the KV pool is rejected by the C layer, not written out of bounds."""
    ckpt = make_tiny_checkpoint(tmp_path, "llama", "gguf-q8_0")
    model, arch, count = c_model(str(ckpt.path), whole_layers=True)
    assert count == arch.num_layers
    driver = PagedDriver(model, arch, num_blocks=4, ops=c_attention_ops())
    with pytest.raises(ValueError, match="decoder_layer"):
        driver.step([Chunk([5, 6, 7], 0, [99])])
