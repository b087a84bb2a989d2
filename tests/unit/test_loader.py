"""load_model: sources, formats and the errors that name their fix."""

from __future__ import annotations

import dataclasses
import json

import gguf
import numpy as np
import pytest
import torch

from localserve.config import ModelConfig
from localserve.loader import load_model, resolve_dtype
from localserve.models.arch import ModelArchConfig
from localserve.models.registry import SUPPORTED_ARCHITECTURES
from tests.helpers.paged import Chunk, PagedDriver
from tests.helpers.tiny_models import build_tiny_hf_model, make_tiny_checkpoint

CPU = torch.device("cpu")


def load(path, **kw):
    return load_model(ModelConfig(model=str(path), **kw), CPU, torch.float32)


def write_minimal_gguf(path, arch: str = "llama", tensors: dict | None = None) -> None:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_embedding_length(64)
    writer.add_block_count(1)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_context_length(128)
    for name, (data, raw_dtype) in (tensors or {}).items():
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*\.gguf file.*config\.json"):
        load(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pth"])
def test_pickle_files_are_refused(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ValueError, match=r"pickle.*never load pickle.*safetensors"):
        load(tmp_path / name)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="never load pickle"):
        load(tmp_path)


def test_folder_without_weights_suggests_dummy(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors.*dummy"):
        load(tmp_path)


def test_unsupported_hf_architecture_lists_supported(tmp_path):
    model = build_tiny_hf_model("llama")
    model.save_pretrained(tmp_path, safe_serialization=True)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model_type"] = "gpt_neox"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="gpt_neox") as err:
        load(tmp_path)
    for name in SUPPORTED_ARCHITECTURES:
        assert name in str(err.value)


def test_unsupported_gguf_architecture_lists_supported(tmp_path):
    path = tmp_path / "phi.gguf"
    write_minimal_gguf(path, "phi3", {"token_embd.weight": (np.zeros((32, 64), np.float32),
                                                             None)})
    with pytest.raises(ValueError, match=r"'phi3'.*supported: .*gemma3.*llama.*qwen3"):
        load(path)


def test_unsupported_tensor_type_names_tensor_and_type(tmp_path):
    path = tmp_path / "iq.gguf"
    iq4_nl = np.zeros((64, 2 * 18), np.uint8)  # 64 rows of 64 values in 32-value blocks
    write_minimal_gguf(path, "llama", {
        "token_embd.weight": (np.zeros((32, 64), np.float32), None),
        "blk.0.attn_q.weight": (iq4_nl, gguf.GGMLQuantizationType.IQ4_NL)})
    with pytest.raises(ValueError,
                       match=r"'blk\.0\.attn_q\.weight'.*IQ4_NL.*supported types:.*Q4_K"):
        load(path)


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"{}")
    with pytest.raises(ValueError, match=r"not a GGUF file.*pass its folder"):
        load(path)


def test_missing_and_misshapen_weights_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    ckpt = make_tiny_checkpoint(tmp_path, "qwen2", "safetensors")
    weights = load_file(ckpt.path / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, ckpt.path / "model.safetensors")
    with pytest.raises(ValueError, match=r"lacks 1 weights.*layers\.1\.mlp\.up_proj\.weight"):
        load(ckpt.path)
    weights["model.layers.1.mlp.up_proj.weight"] = torch.zeros(3, 3)
    save_file(weights, ckpt.path / "model.safetensors")
    with pytest.raises(ValueError, match=r"up_proj\.weight.*shape \(3, 3\).*expects \(128, 64\)"):
        load(ckpt.path)


def test_sharded_safetensors_equal_single_file(tmp_path):
    model = build_tiny_hf_model("qwen3")
    model.save_pretrained(tmp_path / "one", safe_serialization=True)
    model.save_pretrained(tmp_path / "many", safe_serialization=True, max_shard_size="50KB")
    assert (tmp_path / "many" / "model.safetensors.index.json").exists()
    one, many = load(tmp_path / "one"), load(tmp_path / "many")
    for (name, a), (_, b) in zip(one.model.state_dict().items(), many.model.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_dummy_weights_from_config_only(tmp_path, arch):
    model = build_tiny_hf_model(arch)
    model.config.save_pretrained(tmp_path)  # config.json, no weights
    loaded = load(tmp_path, load_format="dummy")
    m = loaded.model
    assert not any(p.is_meta for p in m.parameters())
    assert (m.lm_head.weight is m.model.embed_tokens.weight) == loaded.arch.tie_word_embeddings
    logits = PagedDriver(m, loaded.arch).step([Chunk([5, 6, 7], 0, [0])])
    assert logits.shape == (3, 512) and torch.isfinite(logits).all()


def test_gguf_dummy_and_spec(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path, "gemma3_text", "gguf-q8_0")
    real, dummy = load(ckpt.path), load(ckpt.path, load_format="dummy")
    assert real.arch == dummy.arch
    assert real.spec.quantization == "Q8_0" and dummy.spec.num_params == real.spec.num_params
    assert real.spec.architecture == "gemma3_text" and real.spec.sliding_window is None
    assert real.tokenizer_source == str(ckpt.path)


def test_bf16_load_runs(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path, "mistral", "safetensors")
    loaded = load_model(ModelConfig(model=str(ckpt.path), dtype="bfloat16"), CPU)
    assert loaded.spec.dtype == "bfloat16"
    assert loaded.model.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    driver = PagedDriver(loaded.model, loaded.arch, dtype=torch.bfloat16)
    logits = driver.step([Chunk(list(range(3, 20)), 0, list(range(5)))])
    ref = load(ckpt.path)
    ref_logits = PagedDriver(ref.model, ref.arch).step([Chunk(list(range(3, 20)), 0,
                                                              list(range(5)))])
    assert (logits - ref_logits).abs().max() < 0.1 * ref_logits.abs().max()


def test_resolve_dtype():
    assert resolve_dtype("auto", CPU) is torch.float32
    assert resolve_dtype("bfloat16", CPU) is torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("float8", CPU)


LLAMA_ARCH = ModelArchConfig("llama", 64, 2, 4, 2, 16, 128, 100, 1e-5, 512, 10000.0)
GEMMA_ARCH = dataclasses.replace(LLAMA_ARCH, model_type="gemma3_text")


@pytest.mark.parametrize(("capability", "hip", "arch", "expected"), [
    ((7, 5), None, LLAMA_ARCH, torch.float16),   # Turing (T4, RTX 20xx): bf16 only emulated
    ((7, 5), None, GEMMA_ARCH, torch.float32),   # ...and Gemma 3 overflows fp16
    ((8, 6), None, LLAMA_ARCH, torch.bfloat16),  # Ampere and newer
    ((8, 6), None, GEMMA_ARCH, torch.bfloat16),
    ((9, 0), None, None, torch.bfloat16),
    ((9, 4), "6.4", GEMMA_ARCH, torch.bfloat16),  # ROCm (MI300 reports 9.4)
])
def test_auto_dtype_on_gpus(monkeypatch, capability, hip, arch, expected):
    # torch.cuda.is_bf16_supported() answers True on Turing (emulation): not what decides.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.version, "hip", hip)
    assert resolve_dtype("auto", torch.device("cuda", 0), arch) is expected


def test_float16_is_refused_for_models_that_overflow_it():
    with pytest.raises(ValueError, match=r"overflows float16.*--dtype bfloat16 or float32"):
        resolve_dtype("float16", CPU, GEMMA_ARCH)
    assert resolve_dtype("float16", CPU, LLAMA_ARCH) is torch.float16
    assert resolve_dtype("bfloat16", CPU, GEMMA_ARCH) is torch.bfloat16


def test_gguf_tensor_types_reads_the_header_only(tmp_path):
    from localserve.quant.gguf import gguf_tensor_types, type_name

    ckpt = make_tiny_checkpoint(tmp_path, "llama", "gguf-q8_0")
    types = {name: type_name(t) for name, t in gguf_tensor_types(str(ckpt.path)).items()}
    assert types["token_embd.weight"] == "Q8_0" and types["blk.0.attn_v.weight"] == "Q5_0"
    assert types["blk.1.attn_norm.weight"] == "F32" and types["rope_freqs.weight"] == "F32"
