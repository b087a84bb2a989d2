"""Tiny random models of every supported architecture, as HF folders and as GGUF files.

The HF side uses transformers' own config/model classes (fp32, eager attention), so they are
the reference our models are compared with. The GGUF side is written with gguf.GGUFWriter the
way llama.cpp's converter does it: gguf-py's own HF->GGUF tensor-name map, llama-arch Q/K
rows permuted for interleaved RoPE, Gemma norms stored as 1 + w, Llama 3 rope scaling as a
`rope_freqs` tensor. `write_gguf` returns the weights a GGUF reader should recover (after
F16 / Q8_0 / Q5_0 round trips), for loading into the HF reference.

Reuse: `make_tiny_checkpoint(tmp_path, "gemma3_text", "gguf-q8_0")` -> TinyCheckpoint with
`.path` (what to pass as ModelConfig.model) and `.hf_model` (the reference to compare with).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text")
FORMATS = ("safetensors", "gguf-f32", "gguf-f16", "gguf-bf16", "gguf-q8_0")
VOCAB = 512
_FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
               "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
_GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
              "gemma3_text": "gemma3"}


def tiny_hf_config(model_type: str, for_gguf: bool = False) -> Any:
    """A 2-6 layer, hidden-64 config of `model_type` (transformers' config class).

    `for_gguf` drops what a GGUF cannot say (Gemma's soft-caps and a query scale other than
    head_dim), so both formats can be compared with the same HF reference.
    """
    from transformers import (
        Gemma3TextConfig,
        LlamaConfig,
        MistralConfig,
        Qwen2Config,
        Qwen3Config,
    )

    common: dict[str, Any] = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                  num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=256, rms_norm_eps=1e-6,
                                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if model_type == "llama":
        return LlamaConfig(**common, num_hidden_layers=2, tie_word_embeddings=False,
                           rope_theta=10000.0,
                           rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 16})
    if model_type == "mistral":
        return MistralConfig(**common, num_hidden_layers=2, sliding_window=8,
                             tie_word_embeddings=False, rope_theta=10000.0)
    if model_type == "qwen2":
        return Qwen2Config(**common, num_hidden_layers=2, tie_word_embeddings=True,
                           rope_theta=10000.0)
    if model_type == "qwen3":
        return Qwen3Config(**common, num_hidden_layers=2, head_dim=32,
                           tie_word_embeddings=False, rope_theta=10000.0)
    if model_type == "gemma3_text":
        extra: dict[str, Any] = {} if for_gguf else dict(
            query_pre_attn_scalar=24, final_logit_softcapping=30.0,
            attn_logit_softcapping=50.0)
        return Gemma3TextConfig(**{**common, "num_key_value_heads": 1}, num_hidden_layers=6,
                                head_dim=32, sliding_window=8,
                                query_pre_attn_scalar=extra.pop("query_pre_attn_scalar", 32),
                                rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
                                rope_scaling={"rope_type": "linear", "factor": 2.0},
                                tie_word_embeddings=True, **extra)
    raise ValueError(model_type)


def build_tiny_hf_model(model_type: str, for_gguf: bool = False, seed: int = 0) -> Any:
    """A random fp32 HF causal LM (eager attention), norms randomized too."""
    from transformers import AutoModelForCausalLM

    config = tiny_hf_config(model_type, for_gguf)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager",
                                             dtype=torch.float32)
    gemma = model_type.startswith("gemma")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.1 + (0.0 if gemma else 1.0))
            elif "embed" in name:
                p.copy_(torch.randn_like(p) * (0.3 if gemma else 1.0))
            else:
                p.copy_(torch.randn_like(p) * 0.08)
    return model.eval()


def save_hf_folder(model: Any, folder: Path) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    return folder


# -- GGUF -------------------------------------------------------------------------------------
def llamacpp_permute(w: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of Q/K rows (NeoX halves -> interleaved)."""
    return (w.reshape(num_heads, 2, w.shape[0] // num_heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def llama3_rope_freqs(config: Any) -> np.ndarray:
    """llama.cpp's `rope_freqs` divisors for a Llama 3 rope_scaling dict."""
    rs = config.rope_parameters
    head_dim = config.hidden_size // config.num_attention_heads
    base = rs["rope_theta"]
    low_wavelen = rs["original_max_position_embeddings"] / rs["low_freq_factor"]
    high_wavelen = rs["original_max_position_embeddings"] / rs["high_freq_factor"]
    factors = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * base ** (i / head_dim)
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(rs["factor"])
        else:
            smooth = ((rs["original_max_position_embeddings"] / wavelen - rs["low_freq_factor"])
                      / (rs["high_freq_factor"] - rs["low_freq_factor"]))
            factors.append(1.0 / ((1 - smooth) / rs["factor"] + smooth))
    return np.asarray(factors, dtype=np.float32)


def _store(weight_type: str, name: str, w: np.ndarray) -> tuple[np.ndarray, Any, np.ndarray]:
    """(data to write, raw_dtype or None, what a reader recovers) for one tensor."""
    q = gguf.GGMLQuantizationType
    if w.ndim == 1 or weight_type == "f32":
        return w, None, w
    if weight_type == "f16":
        return w.astype(np.float16), None, w.astype(np.float16).astype(np.float32)
    if weight_type == "bf16":
        raw = gguf_quantize(w, q.BF16)
        return raw, q.BF16, gguf_dequantize(raw, q.BF16).reshape(w.shape)
    if weight_type == "q8_0":
        # Mix types like real files do: V and down projections as Q5_0, the rest Q8_0.
        qtype = q.Q5_0 if (".attn_v." in name or ".ffn_down." in name) else q.Q8_0
        raw = gguf_quantize(w, qtype)
        return raw, qtype, gguf_dequantize(raw, qtype).reshape(w.shape)
    raise ValueError(weight_type)


def write_gguf(model: Any, path: Path, weight_type: str = "f32",
               tokenizer: Any | None = None) -> dict[str, torch.Tensor]:
    """Writes `model` as llama.cpp would; returns the HF state dict a reader recovers."""
    config = model.config
    model_type = config.model_type
    arch = _GGUF_ARCH[model_type]
    num_layers = config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"tiny-{model_type}")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(num_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_file_type(_FILE_TYPES[weight_type])
    rope = config.rope_parameters
    if model_type == "gemma3_text":
        rope = rope["full_attention"]
        writer.add_sliding_window(config.sliding_window)
    else:
        writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(rope["rope_theta"])
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    if model_type == "mistral" and config.sliding_window:
        writer.add_sliding_window(config.sliding_window)
    if tokenizer is not None:
        add_gguf_tokenizer(writer, tokenizer)

    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    name_map = gguf.get_tensor_name_map(arch_enum, num_layers)
    recovered: dict[str, torch.Tensor] = {}
    if rope.get("rope_type") == "llama3":
        writer.add_tensor("rope_freqs.weight", llama3_rope_freqs(config))
    state = model.state_dict()
    for hf_name, tensor in state.items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        base, _, suffix = hf_name.rpartition(".")
        gguf_name = f"{name_map.get_name(base)}.{suffix}"
        w = tensor.detach().float().numpy().copy()
        if arch == "llama" and gguf_name.split(".")[-2] in ("attn_q", "attn_k"):
            heads = (config.num_attention_heads if ".attn_q." in gguf_name
                     else config.num_key_value_heads)
            w = llamacpp_permute(w, heads)
        else:
            heads = None
        if arch == "gemma3" and gguf_name.endswith("norm.weight"):
            w = w + 1.0
        data, raw_dtype, back = _store(weight_type, gguf_name, w)
        writer.add_tensor(gguf_name, data, raw_dtype=raw_dtype)
        back = np.asarray(back, dtype=np.float32)
        if heads is not None:  # undo the permutation on what a reader gets back
            half = back.shape[0] // heads // 2
            back = back.reshape(heads, half, 2, *back.shape[1:]).swapaxes(1, 2).reshape(back.shape)
        if arch == "gemma3" and gguf_name.endswith("norm.weight"):
            back = back - 1.0
        recovered[hf_name] = torch.from_numpy(np.ascontiguousarray(back))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if config.tie_word_embeddings and "lm_head.weight" in state:
        recovered["lm_head.weight"] = recovered["model.embed_tokens.weight"]
    return recovered


# -- tokenizer --------------------------------------------------------------------------------
_CORPUS = ["The quick brown fox jumps over the lazy dog.", "Hello, world! Hello again.",
           "Ünïcödé tèxt — naïve café, 東京 and 😀 emoji 🎉!", "def f(x):\n    return x + 1\n",
           "numbers 0123456789 and symbols #$%&*()[]{}<>", "tiny tokenizers are tiny."] * 4
TINY_CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>"
                      "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


def build_tiny_tokenizer(vocab_size: int = 320) -> Any:
    """A byte-level BPE (GPT-2 style) with <pad>, <s>, </s>, <|endoftext|> as ids 0-3."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>",
                                                                  "<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_CORPUS, trainer)
    return tok


def save_tiny_tokenizer(tok: Any, folder: Path, chat_template: str | None = TINY_CHAT_TEMPLATE
                        ) -> Path:
    """tokenizer.json + tokenizer_config.json (BOS added, like Llama) into `folder`."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", add_bos_token=True)
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(folder)
    return folder


def add_gguf_tokenizer(writer: Any, tok: Any) -> None:
    """A byte-level BPE as llama.cpp's 'gpt2' tokenizer metadata."""
    import json

    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    specials = {a["id"] for a in data["added_tokens"] if a["special"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if i in specials else 1 for i in range(len(tokens))])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_chat_template(TINY_CHAT_TEMPLATE)


@dataclass
class TinyCheckpoint:
    model_type: str
    fmt: str
    path: Path  # what to pass as ModelConfig.model
    hf_model: Any  # the transformers reference holding the weights a reader recovers


def make_tiny_checkpoint(tmp_path: Path, model_type: str, fmt: str = "safetensors",
                         with_tokenizer: bool = False, seed: int = 0) -> TinyCheckpoint:
    """Writes a tiny random `model_type` checkpoint in `fmt` (one of FORMATS) under tmp_path."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}")
    is_gguf = fmt.startswith("gguf")
    hf_model = build_tiny_hf_model(model_type, for_gguf=is_gguf, seed=seed)
    tok = build_tiny_tokenizer() if with_tokenizer else None
    folder = Path(tmp_path) / f"{model_type}-{fmt}"
    folder.mkdir(parents=True, exist_ok=True)
    if not is_gguf:
        save_hf_folder(hf_model, folder)
        if tok is not None:
            save_tiny_tokenizer(tok, folder)
        return TinyCheckpoint(model_type, fmt, folder, hf_model)
    path = folder / f"tiny-{model_type}-{fmt.removeprefix('gguf-')}.gguf"
    recovered = write_gguf(hf_model, path, fmt.removeprefix("gguf-"), tokenizer=tok)
    hf_model.load_state_dict(recovered, strict=False)
    return TinyCheckpoint(model_type, fmt, path, hf_model)
