"""The Triton kernels as the shared layers' ops (attention through the forward context)."""

from __future__ import annotations

from localserve.layers.ops import LayerOps
from localserve.runner.context import KernelAttentionOps


def triton_attention_ops() -> KernelAttentionOps:
    """Paged attention and the KV write from localserve.kernels.triton; host-side bounds
    keep the launch shape fixed under CUDA graphs and avoid a device sync."""
    from localserve.kernels import triton

    return KernelAttentionOps(triton, host_bounds=True)


def triton_layer_ops() -> LayerOps:
    from localserve.kernels.triton import act_and_mul, rms_norm, rotary_embedding

    return LayerOps(rms_norm=rms_norm, rotary_embedding=rotary_embedding,
                    act_and_mul=act_and_mul)
