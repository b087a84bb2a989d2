"""config.json dicts as published (legacy and transformers-5 spellings) -> ModelArchConfig."""

from __future__ import annotations

import pytest

from localserve.models.arch import FULL_ATTENTION, SLIDING_ATTENTION, arch_from_hf_config
from localserve.models.registry import SUPPORTED_ARCHITECTURES, get_model_class

LLAMA_32_1B = {
    "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192,
    "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 16,
    "head_dim": 64, "vocab_size": 128256, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "max_position_embeddings": 131072, "tie_word_embeddings": True, "hidden_act": "silu",
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"}}
QWEN25 = {
    "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
    "num_attention_heads": 14, "num_key_value_heads": 2, "num_hidden_layers": 24,
    "vocab_size": 151936, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "max_position_embeddings": 32768, "tie_word_embeddings": True, "rope_scaling": None,
    "use_sliding_window": False, "sliding_window": 32768, "max_window_layers": 21}
GEMMA3_4B = {
    "model_type": "gemma3", "text_config": {
        "model_type": "gemma3_text", "hidden_size": 2560, "intermediate_size": 10240,
        "num_attention_heads": 8, "num_key_value_heads": 4, "num_hidden_layers": 34,
        "head_dim": 256, "query_pre_attn_scalar": 256, "sliding_window": 1024,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0, "sliding_window_pattern": 6}}


def test_llama32_legacy_rope_scaling():
    arch = arch_from_hf_config(LLAMA_32_1B)
    assert arch.rope_scaling == LLAMA_32_1B["rope_scaling"] and arch.rope_theta == 500000.0
    assert (arch.head_dim, arch.num_kv_heads, arch.tie_word_embeddings) == (64, 8, True)
    assert arch.layer_types == (FULL_ATTENTION,) * 16 and arch.attn_scale == 64 ** -0.5


def test_transformers5_rope_parameters():
    cfg = dict(LLAMA_32_1B, rope_parameters={**LLAMA_32_1B["rope_scaling"],
                                             "rope_theta": 500000.0})
    del cfg["rope_scaling"], cfg["rope_theta"]
    assert arch_from_hf_config(cfg) == arch_from_hf_config(LLAMA_32_1B)


def test_qwen25_biases_and_disabled_window():
    arch = arch_from_hf_config(QWEN25)
    assert arch.qkv_bias and not arch.o_bias and not arch.qk_norm
    assert arch.sliding_window is None and set(arch.layer_types) == {FULL_ATTENTION}
    windowed = arch_from_hf_config(dict(QWEN25, use_sliding_window=True))
    assert windowed.layer_types[:21] == (FULL_ATTENTION,) * 21
    assert windowed.layer_types[21:] == (SLIDING_ATTENTION,) * 3


def test_qwen3_and_mistral():
    qwen3 = arch_from_hf_config(dict(QWEN25, model_type="qwen3", head_dim=128,
                                     attention_bias=False))
    assert qwen3.qk_norm and not qwen3.qkv_bias and qwen3.head_dim == 128
    mistral = arch_from_hf_config(dict(LLAMA_32_1B, model_type="mistral", sliding_window=4096,
                                       rope_scaling=None))
    assert mistral.effective_sliding_window == 4096 and mistral.rope_scaling is None


def test_gemma3_multimodal_config_uses_text_config():
    arch = arch_from_hf_config(GEMMA3_4B)
    assert arch.model_type == "gemma3_text" and arch.tie_word_embeddings
    assert arch.rope_scaling == {"factor": 8.0, "rope_type": "linear"}
    assert (arch.rope_theta, arch.rope_local_theta) == (1e6, 1e4)
    assert arch.layer_types.count(FULL_ATTENTION) == 5  # layers 5, 11, 17, 23, 29
    assert arch.layer_sliding_window(0) == 1024 and arch.layer_sliding_window(5) is None
    assert arch.effective_sliding_window is None and arch.vocab_size == 262_208
    assert arch.activation == "gelu_tanh" and arch.attn_scale == 256 ** -0.5


def test_unsupported_rope_and_activation():
    with pytest.raises(ValueError, match="unsupported rope scaling 'yarn'"):
        arch_from_hf_config(dict(QWEN25, rope_scaling={"type": "yarn", "factor": 4.0}))
    with pytest.raises(ValueError, match="unsupported activation 'relu'"):
        arch_from_hf_config(dict(QWEN25, hidden_act="relu"))


def test_registry():
    assert get_model_class("gemma3").__name__ == "Gemma3ForCausalLM"
    assert get_model_class("qwen2").__name__ == "LlamaForCausalLM"
    with pytest.raises(ValueError, match="supported: " + ", ".join(SUPPORTED_ARCHITECTURES)):
        get_model_class("phi3")
