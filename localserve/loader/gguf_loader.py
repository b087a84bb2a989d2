"""GGUF checkpoints: hyper-parameters from the metadata, weights renamed and un-converted.

llama.cpp's converter changes two things that we undo exactly as transformers does:
- llama-arch Q/K rows are permuted (interleaved RoPE pairs); we apply the inverse
  permutation to rows (to raw quantized rows as well: GGUF blocks never span rows);
- Gemma norm weights are stored as 1 + w; we subtract 1 (our Gemma norm adds it back).
Missing metadata gets the default the transformers config class would give.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from localserve.loader.gguf_reader import GGUFFile
from localserve.models.arch import FULL_ATTENTION, SLIDING_ATTENTION, ModelArchConfig
from localserve.models.registry import GGUF_ARCHITECTURES, SUPPORTED_ARCHITECTURES
from localserve.quant.gguf import BLOCK_TYPES, FLOAT_TYPES, dequantize, supported_type_names
from localserve.quant.gguf import type_name as qtype_name

_TOP_LEVEL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
              "output": "lm_head"}
_LAYER = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj",
          "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
          "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
          "attn_k_norm": "self_attn.k_norm", "ffn_gate": "mlp.gate_proj",
          "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
          "ffn_norm": "post_attention_layernorm"}
_GEMMA_LAYER = {**_LAYER, "ffn_norm": "pre_feedforward_layernorm",
                "post_attention_norm": "post_attention_layernorm",
                "post_ffw_norm": "post_feedforward_layernorm"}
_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_IGNORED = {"rope_freqs.weight"}  # folded into ModelArchConfig.rope_freq_factors


@dataclass(frozen=True)
class QuantizedWeight:
    """Raw GGUF rows to keep as they are: uint8 [rows, row_bytes] and the ggml type."""

    raw: torch.Tensor
    qtype: int


def gguf_model_type(gguf: GGUFFile) -> str:
    arch = gguf.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(f"{gguf.path}: unsupported GGUF architecture {arch!r}; supported: "
                         f"{', '.join(sorted(GGUF_ARCHITECTURES))} (model types: "
                         f"{', '.join(SUPPORTED_ARCHITECTURES)})")
    model_type = GGUF_ARCHITECTURES[arch]
    # transformers: a llama-arch file named like Mistral is a Mistral model.
    if arch == "llama" and "mistral" in str(gguf.get("general.name", "")).lower():
        model_type = "mistral"
    return model_type


def arch_from_gguf(gguf: GGUFFile) -> ModelArchConfig:
    """The hyper-parameters stated by (or defaulted for) a GGUF file."""
    arch = gguf.get("general.architecture")
    model_type = gguf_model_type(gguf)

    def key(name: str, default: object = None) -> object:
        return gguf.get(f"{arch}.{name}", default)

    hidden = int(key("embedding_length"))
    num_heads = int(key("attention.head_count"))
    num_kv_heads = key("attention.head_count_kv", num_heads)
    num_layers = int(key("block_count"))
    head_dim = int(key("attention.key_length") or key("rope.dimension_count")
                   or hidden // num_heads)
    if "token_embd.weight" not in gguf.tensors:
        raise ValueError(f"{gguf.path} has no token_embd.weight tensor")
    vocab = key("vocab_size") or gguf.tensors["token_embd.weight"].shape[0]
    scaling = None
    if key("rope.scaling.type") not in (None, "none"):
        kind, factor = key("rope.scaling.type"), float(key("rope.scaling.factor", 1.0))
        if kind != "linear":
            raise ValueError(f"{gguf.path}: rope scaling {kind!r} is not supported "
                             "(supported: linear, and llama3 via rope_freqs)")
        scaling = {"rope_type": "linear", "factor": factor} if factor != 1.0 else None
    freq_factors = None
    if "rope_freqs.weight" in gguf.tensors:
        freq_factors = tuple(float(x) for x in gguf.float_tensor("rope_freqs.weight").float())
    common = dict(
        model_type=model_type, hidden_size=hidden, num_layers=num_layers, num_heads=num_heads,
        num_kv_heads=int(num_kv_heads if not isinstance(num_kv_heads, list)
                         else max(num_kv_heads)),
        head_dim=head_dim, intermediate_size=int(key("feed_forward_length")),
        vocab_size=int(vocab),
        rms_norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_scaling=scaling, rope_freq_factors=freq_factors,
        tie_word_embeddings="output.weight" not in gguf.tensors,
        qkv_bias="blk.0.attn_q.bias" in gguf.tensors,
        o_bias="blk.0.attn_output.bias" in gguf.tensors,
        mlp_bias="blk.0.ffn_up.bias" in gguf.tensors)
    window = key("attention.sliding_window")
    if model_type == "gemma3_text":
        window = window if window is not None else 4096
        # llama.cpp: every 6th layer is global unless the file says otherwise (an int period,
        # or one bool per layer, True = sliding); the 27B scales queries by hidden/heads.
        pattern = key("attention.sliding_window_pattern", 6)
        if isinstance(pattern, list):
            types = tuple(SLIDING_ATTENTION if p else FULL_ATTENTION for p in pattern)
        else:
            types = tuple(SLIDING_ATTENTION if (i + 1) % int(pattern) else FULL_ATTENTION
                          for i in range(num_layers))
        scalar = hidden // num_heads if (num_layers, hidden) == (62, 5376) else head_dim
        return ModelArchConfig(
            **common, max_position_embeddings=int(key("context_length", 131_072)),
            rope_theta=float(key("rope.freq_base", 1_000_000.0)),
            rope_local_theta=float(key("rope.freq_base_swa", 10_000.0)),
            sliding_window=int(window) if window else None, layer_types=types,
            activation="gelu_tanh", qk_norm=True, query_pre_attn_scalar=float(scalar),
            final_logit_softcapping=key("final_logit_softcapping"))
    # A window in a llama-family file (a Mistral) applies to every layer.
    return ModelArchConfig(
        **common, max_position_embeddings=int(key("context_length", 2048)),
        rope_theta=float(key("rope.freq_base", 10_000.0)),
        sliding_window=int(window) if window else None,
        layer_types=(SLIDING_ATTENTION if window else FULL_ATTENTION,) * num_layers,
        qk_norm=model_type == "qwen3")


def gguf_quantization(gguf: GGUFFile) -> str:
    """A short label of the file's quantization, e.g. 'Q4_K_M' (from general.file_type)."""
    from gguf import LlamaFileType

    file_type = gguf.get("general.file_type")
    try:
        return LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_")
    except (TypeError, ValueError):
        types = sorted({qtype_name(t.qtype) for t in gguf.tensors.values()})
        return "+".join(types)


def _our_name(gguf_name: str, model_type: str) -> str | None:
    if gguf_name in _IGNORED:
        return None
    base, _, suffix = gguf_name.rpartition(".")
    if base in _TOP_LEVEL and suffix in ("weight", "bias"):
        return f"{_TOP_LEVEL[base]}.{suffix}"
    match = _BLOCK.fullmatch(gguf_name)
    table = _GEMMA_LAYER if model_type == "gemma3_text" else _LAYER
    if match and match.group(2) in table:
        return f"model.layers.{match.group(1)}.{table[match.group(2)]}.{match.group(3)}"
    raise ValueError(f"unexpected tensor {gguf_name!r} in a {model_type} GGUF file")


def _unpermute_rows(rows: np.ndarray | torch.Tensor, num_heads: int) -> torch.Tensor:
    """Inverse of llama.cpp's Q/K permutation along dim 0 (float or raw-byte rows)."""
    t = torch.as_tensor(rows)
    half = t.shape[0] // num_heads // 2
    return t.reshape(num_heads, half, 2, *t.shape[1:]).transpose(1, 2).reshape(t.shape)


def iter_gguf_weights(gguf: GGUFFile, arch: ModelArchConfig, keep_quantized: bool = False
                      ) -> Iterator[tuple[str, torch.Tensor | QuantizedWeight]]:
    """(our parameter name, float32/16 tensor or QuantizedWeight) for every tensor of the file.

    Float tensors keep their stored dtype (the caller casts); block tensors are dequantized
    to float32 unless `keep_quantized` (2-D weights only; norms and biases are floats).
    """
    permute = gguf.get("general.architecture") == "llama"
    for gguf_name, info in gguf.tensors.items():
        name = _our_name(gguf_name, arch.model_type)
        if name is None:
            continue
        if info.qtype not in FLOAT_TYPES and info.qtype not in BLOCK_TYPES:
            raise ValueError(f"{gguf.path}: tensor {gguf_name!r} has type "
                             f"{qtype_name(info.qtype)}, which is not supported; supported "
                             f"types: {supported_type_names()}")
        heads = None
        if permute and (".attn_q." in gguf_name or ".attn_k." in gguf_name):
            heads = arch.num_heads if ".attn_q." in gguf_name else arch.num_kv_heads
        if info.qtype in BLOCK_TYPES and keep_quantized:
            raw = torch.from_numpy(np.array(gguf.raw(gguf_name)))  # [rows, row_bytes]
            if heads is not None:
                raw = _unpermute_rows(raw, heads).contiguous()
            yield name, QuantizedWeight(raw, int(info.qtype))
            continue
        if info.qtype in BLOCK_TYPES:
            tensor = dequantize(gguf.raw(gguf_name), info.qtype).reshape(info.shape)
        else:
            tensor = gguf.float_tensor(gguf_name)
        if heads is not None:
            tensor = _unpermute_rows(tensor, heads)
        if arch.model_type == "gemma3_text" and gguf_name.endswith("norm.weight"):
            tensor = tensor.float() - 1.0
        yield name, tensor
