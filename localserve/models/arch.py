"""ModelArchConfig: a model's hyper-parameters, parsed once from config.json or GGUF metadata.

Model files read only this dataclass, never a raw config dict, so both checkpoint formats
(and the dummy format) build exactly the same modules. `arch_from_hf_config` follows the
defaults of the transformers config classes for each supported `model_type`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"
_ROPE_TYPES = ("linear", "llama3")  # besides "default"


@dataclass(frozen=True)
class ModelArchConfig:
    """Hyper-parameters of one decoder-only model (facts of the checkpoint, not knobs)."""

    model_type: str  # registry key: llama | mistral | qwen2 | qwen3 | gemma3_text
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope_theta: float
    # HF rope_scaling dict of the full-attention layers ({"rope_type": "linear"|"llama3", ...}).
    rope_scaling: Mapping[str, Any] | None = field(default=None, hash=False)
    # Sliding layers of Gemma 3 use their own base (rope_local_base_freq) and scaling.
    rope_local_theta: float | None = None
    rope_local_scaling: Mapping[str, Any] | None = field(default=None, hash=False)
    # llama.cpp's `rope_freqs` tensor: per-frequency divisors (Llama 3.1 scaling in GGUF).
    rope_freq_factors: tuple[float, ...] | None = None
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()  # FULL_ATTENTION | SLIDING_ATTENTION, one per layer
    tie_word_embeddings: bool = False
    activation: str = "silu"  # silu | gelu_tanh
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    query_pre_attn_scalar: float | None = None  # Gemma: scale = query_pre_attn_scalar**-0.5
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None

    def __post_init__(self) -> None:
        if not self.layer_types:
            object.__setattr__(self, "layer_types", (FULL_ATTENTION,) * self.num_layers)
        if len(self.layer_types) != self.num_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries for "
                             f"{self.num_layers} layers")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of "
                             f"num_kv_heads ({self.num_kv_heads})")
        for scaling in (self.rope_scaling, self.rope_local_scaling):
            if scaling is not None and scaling.get("rope_type") not in _ROPE_TYPES:
                raise ValueError(f"unsupported rope scaling {scaling.get('rope_type')!r}; "
                                 f"supported: default, {', '.join(_ROPE_TYPES)}")

    @property
    def overflows_fp16(self) -> bool:
        """Gemma 3's activations exceed float16's range (65,504): the default Gemma 3 270M
        decodes NaN logits in fp16 (every greedy token 0) and the same tokens as fp32 in bf16
        (tests/e2e/test_default_model_parity.py)."""
        return self.model_type == "gemma3_text"

    def layer_sliding_window(self, layer_idx: int) -> int | None:
        """The attention window of layer `layer_idx` (None = full attention)."""
        if self.layer_types[layer_idx] == SLIDING_ATTENTION:
            return self.sliding_window
        return None

    @property
    def attn_scale(self) -> float:
        base = self.query_pre_attn_scalar if self.query_pre_attn_scalar else self.head_dim
        return float(base) ** -0.5

    @property
    def effective_sliding_window(self) -> int | None:
        """The window if every layer slides (what a KV manager may rely on), else None."""
        if self.sliding_window and all(t == SLIDING_ATTENTION for t in self.layer_types):
            return self.sliding_window
        return None


def normalize_rope_scaling(scaling: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """An HF rope_scaling dict with `rope_type` set, or None for plain RoPE."""
    if not scaling:
        return None
    out = {k: v for k, v in scaling.items() if k != "rope_theta"}
    rope_type = out.pop("type", None) or out.get("rope_type") or "default"
    if rope_type == "default":
        return None
    out["rope_type"] = rope_type
    if rope_type == "linear" and float(out.get("factor", 1.0)) == 1.0:
        return None
    return out


_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh",
                "gelu_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}


def _activation(name: str) -> str:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def _rope_from_hf(cfg: Mapping[str, Any], default_theta: float
                  ) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling) from either the transformers-5 `rope_parameters` or the legacy keys."""
    params = cfg.get("rope_parameters")
    if isinstance(params, Mapping) and "rope_theta" in params:
        return float(params["rope_theta"]), normalize_rope_scaling(params)
    theta = float(cfg.get("rope_theta") or default_theta)
    return theta, normalize_rope_scaling(cfg.get("rope_scaling"))


def arch_from_hf_config(cfg: Mapping[str, Any]) -> ModelArchConfig:
    """Parses an HF config.json dict (text models; Gemma 3's multimodal config via text_config)."""
    model_type = cfg.get("model_type")
    if model_type == "gemma3" and isinstance(cfg.get("text_config"), Mapping):
        cfg = {**cfg["text_config"], "model_type": "gemma3_text",
               "tie_word_embeddings": cfg.get("tie_word_embeddings", True)}
        model_type = "gemma3_text"
    if model_type == "gemma3_text":
        return _gemma3_from_hf(cfg)
    if model_type not in ("llama", "mistral", "qwen2", "qwen3"):
        from localserve.models.registry import SUPPORTED_ARCHITECTURES

        raise ValueError(f"unsupported architecture {model_type!r} (config.json model_type); "
                         f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    num_heads = int(cfg["num_attention_heads"])
    num_layers = int(cfg["num_hidden_layers"])
    head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // num_heads)
    theta, scaling = _rope_from_hf(cfg, 10000.0)
    sliding_window = cfg.get("sliding_window")
    layer_types: tuple[str, ...] = ()
    if model_type in ("qwen2", "qwen3"):
        if not cfg.get("use_sliding_window", False):
            sliding_window = None
        max_window_layers = int(cfg.get("max_window_layers", 28))
        layer_types = tuple(cfg.get("layer_types") or (
            SLIDING_ATTENTION if sliding_window is not None and i >= max_window_layers
            else FULL_ATTENTION for i in range(num_layers)))
    elif model_type == "mistral":
        layer_types = (SLIDING_ATTENTION if sliding_window else FULL_ATTENTION,) * num_layers
    else:
        sliding_window = None
    attention_bias = bool(cfg.get("attention_bias", False))
    return ModelArchConfig(
        model_type=model_type,
        hidden_size=int(cfg["hidden_size"]),
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or num_heads),
        head_dim=head_dim,
        intermediate_size=int(cfg["intermediate_size"]),
        vocab_size=int(cfg["vocab_size"]),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
        rope_theta=theta,
        rope_scaling=scaling,
        sliding_window=int(sliding_window) if sliding_window else None,
        layer_types=layer_types,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        activation=_activation(cfg.get("hidden_act", "silu")),
        # Qwen2 always has q/k/v biases (and no flag); the others follow attention_bias.
        qkv_bias=True if model_type == "qwen2" else attention_bias,
        o_bias=attention_bias if model_type != "qwen2" else False,
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        qk_norm=model_type == "qwen3",
    )


def _gemma3_from_hf(cfg: Mapping[str, Any]) -> ModelArchConfig:
    num_layers = int(cfg.get("num_hidden_layers", 26))
    num_heads = int(cfg.get("num_attention_heads", 8))
    layer_types = cfg.get("layer_types")
    if not layer_types:
        pattern = int(cfg.get("sliding_window_pattern") or cfg.get("_sliding_window_pattern") or 6)
        layer_types = [SLIDING_ATTENTION if (i + 1) % pattern else FULL_ATTENTION
                       for i in range(num_layers)]
    params = cfg.get("rope_parameters")
    if isinstance(params, Mapping) and FULL_ATTENTION in params:
        full = params.get(FULL_ATTENTION) or {}
        local = params.get(SLIDING_ATTENTION) or {}
        theta = float(full.get("rope_theta", 1_000_000.0))
        scaling = normalize_rope_scaling(full)
        local_theta = float(local.get("rope_theta", 10_000.0))
        local_scaling = normalize_rope_scaling(local)
    else:
        theta = float(cfg.get("rope_theta") or 1_000_000.0)
        scaling = normalize_rope_scaling(cfg.get("rope_scaling"))
        local_theta = float(cfg.get("rope_local_base_freq") or 10_000.0)
        local_scaling = None
    if cfg.get("use_bidirectional_attention"):
        raise ValueError("Gemma 3 with use_bidirectional_attention (an embedding model) is not "
                         "a causal LM; it is not supported")
    head_dim = int(cfg.get("head_dim", 256))
    sliding_window = cfg.get("sliding_window", 4096)
    return ModelArchConfig(
        model_type="gemma3_text",
        hidden_size=int(cfg.get("hidden_size", 2304)),
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=int(cfg.get("num_key_value_heads", 4)),
        head_dim=head_dim,
        intermediate_size=int(cfg.get("intermediate_size", 9216)),
        vocab_size=int(cfg.get("vocab_size", 262_208)),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 131_072)),
        rope_theta=theta,
        rope_scaling=scaling,
        rope_local_theta=local_theta,
        rope_local_scaling=local_scaling,
        sliding_window=int(sliding_window) if sliding_window else None,
        layer_types=tuple(layer_types),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        activation=_activation(cfg.get("hidden_activation") or "gelu_pytorch_tanh"),
        qkv_bias=bool(cfg.get("attention_bias", False)),
        o_bias=bool(cfg.get("attention_bias", False)),
        qk_norm=True,
        query_pre_attn_scalar=float(cfg.get("query_pre_attn_scalar", 256)),
        # Gemma 3 does not soft-cap attention scores (HF's and llama.cpp's Gemma 3 ignore
        # attn_logit_softcapping, which its checkpoints leave null anyway).
        attn_logit_softcapping=None,
        final_logit_softcapping=cfg.get("final_logit_softcapping"),
    )
