"""The Triton kernels as the shared layers' ops (attention through the forward context)."""

from __future__ import annotations

import torch

from localserve.layers.ops import LayerOps
from localserve.runner.context import AttentionMetadata


class TritonAttentionOps:
    """Paged attention and the KV write from localserve.kernels.triton."""

    def __init__(self) -> None:
        from localserve.kernels.triton import paged_attention, write_kv

        self._attend = paged_attention
        self._write_kv = write_kv

    def write_kv(self, key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                 v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        self._write_kv(key, value, k_cache, v_cache, slot_mapping)

    def attend(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
               meta: AttentionMetadata, scale: float, sliding_window: int | None,
               soft_cap: float | None) -> torch.Tensor:
        # Host-side bounds: no device sync, and a fixed launch shape under CUDA graphs.
        return self._attend(q, k_cache, v_cache, meta.block_tables, meta.query_start_loc,
                            meta.seq_lens, scale, sliding_window, soft_cap,
                            max_query_len=meta.max_query_len, max_seq_len=meta.max_seq_len)


def triton_layer_ops() -> LayerOps:
    from localserve.kernels.triton import act_and_mul, rms_norm, rotary_embedding

    return LayerOps(rms_norm=rms_norm, rotary_embedding=rotary_embedding,
                    act_and_mul=act_and_mul)
