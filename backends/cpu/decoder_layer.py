"""Decoder layers of the shared models as one C call each (kernels/cpu/ls_layer.c).

At batch-1 decode the module path spends about as long in Python between the kernels (module
calls, tensor allocations, argument checks for a dozen calls per layer) as in the layer's
matmuls. `install_c_decoder_layers` wraps every eligible Llama-family or Gemma 3 layer, after
the C linear methods and projection fusion are in place, in a `CDecoderLayer` that runs the
same kernels in one call: same results, bit for bit. Layers the C layer cannot express
(biases, float weights, unknown layer classes) keep the module path.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from localserve.backends.cpu.methods import CFusedGGUFLinear, CGGUFLinearMethod
from localserve.kernels.cpu.layer import DecoderLayerKernel, DecoderLayerWeights, Step
from localserve.models.gemma3 import Gemma3DecoderLayer
from localserve.models.llama import LlamaDecoderLayer
from localserve.runner.context import AttentionMetadata, get_forward_context

log = logging.getLogger(__name__)


class StepCache:
    """The current forward's `Step`: built by the first layer, reused by the others."""

    def __init__(self) -> None:
        # (meta, positions, step); meta and positions are held, so their identities stay
        # unique while cached.
        self._cached: tuple[AttentionMetadata, torch.Tensor, Step] | None = None

    def get(self, meta: AttentionMetadata, positions: torch.Tensor) -> Step:
        cached = self._cached
        if cached is None or cached[0] is not meta or cached[1] is not positions:
            cached = self._cached = (meta, positions, Step(
                positions, meta.slot_mapping, meta.block_tables, meta.query_start_loc,
                meta.seq_lens))
        return cached[2]


class CDecoderLayer(nn.Module):
    """Runs `layer` (kept as a submodule: it owns the weights) through `ls_decoder_layer`,
    with the torch layers' contract: (positions, hidden, residual) -> (hidden, residual),
    hidden not yet added to residual. Updates `hidden` in place, as the model loops pass
    each layer's outputs only to the next."""

    def __init__(self, layer: nn.Module, kernel: DecoderLayerKernel, steps: StepCache) -> None:
        super().__init__()
        self.layer = layer
        self.kernel = kernel
        self.layer_idx = layer.self_attn.attn.layer_idx
        self._steps = steps

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor,
                residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        ctx = get_forward_context()
        k_cache, v_cache = ctx.kv_caches[self.layer_idx]
        first = residual is None
        if first:
            residual = torch.empty_like(hidden)
        self.kernel.run(self._steps.get(ctx.meta, positions), k_cache, v_cache, hidden,
                        residual, first)
        return hidden, residual


def _norm(module: nn.Module | None) -> torch.Tensor | None:
    return None if module is None else module.weight.detach()


def layer_weights(layer: nn.Module) -> DecoderLayerWeights | None:
    """What the C layer needs from a Llama-family or Gemma 3 layer, or None if it cannot run
    it (a part not on the C GGUF kernels, a bias, norms with different eps/offsets)."""
    if isinstance(layer, Gemma3DecoderLayer):
        pre_mlp, attn_out, mlp_out = (layer.pre_feedforward_layernorm,
                                      layer.post_attention_layernorm,
                                      layer.post_feedforward_layernorm)
    elif isinstance(layer, LlamaDecoderLayer):
        pre_mlp, attn_out, mlp_out = layer.post_attention_layernorm, None, None
    else:
        return None
    attn, mlp = layer.self_attn, layer.mlp
    qkv, gate_up = attn.qkv_proj, mlp.gate_up_proj
    if not (isinstance(qkv, CFusedGGUFLinear) and len(qkv.weights) == 3
            and isinstance(gate_up, CFusedGGUFLinear) and len(gate_up.weights) == 2):
        return None
    singles = (attn.o_proj, mlp.down_proj)
    if any(type(p.method) is not CGGUFLinearMethod or p.bias is not None for p in singles):
        return None
    norms = [n for n in (layer.input_layernorm, pre_mlp, attn_out, mlp_out, attn.q_norm,
                         attn.k_norm) if n is not None]
    if len({(n.eps, n.offset) for n in norms}) != 1:
        return None
    rotary = attn.rotary
    return DecoderLayerWeights(
        num_heads=attn.num_heads, num_kv_heads=attn.num_kv_heads, head_dim=attn.head_dim,
        activation=mlp.activation, eps=norms[0].eps, norm_offset=norms[0].offset,
        input_norm=_norm(layer.input_layernorm), pre_mlp_norm=_norm(pre_mlp),
        attn_out_norm=_norm(attn_out), mlp_out_norm=_norm(mlp_out),
        q_norm=_norm(attn.q_norm), k_norm=_norm(attn.k_norm),
        qkv=tuple(qkv.weights), o=attn.o_proj.method.weight, gate_up=tuple(gate_up.weights),
        down=mlp.down_proj.method.weight, cos_sin=rotary.cos_sin(torch.device("cpu")),
        scale=attn.attn.scale, sliding_window=attn.attn.sliding_window,
        soft_cap=attn.attn.soft_cap)


def install_c_decoder_layers(model: nn.Module) -> int:
    """Wraps every eligible layer of `model.model.layers` in a CDecoderLayer; returns how
    many (0 leaves the model untouched)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        return 0
    steps = StepCache()
    count = 0
    for i, layer in enumerate(layers):
        weights = layer_weights(layer)
        if weights is None:
            continue
        layers[i] = CDecoderLayer(layer, DecoderLayerKernel(weights), steps)
        count += 1
    if count and count != len(layers):
        log.info("%d of %d decoder layers run as one C call each", count, len(layers))
    return count
