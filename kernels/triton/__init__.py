"""Triton kernels of the GPU backend (NVIDIA and AMD through Triton alone).

Each wrapper checks dtypes, shapes and devices, then launches; its ground truth is the function
of the same name in localserve.kernels.reference. On a machine without a GPU, set
TRITON_INTERPRET=1 before importing this package to run the kernels on CPU tensors.
"""

from localserve.kernels.triton.activation import act_and_mul
from localserve.kernels.triton.attention import paged_attention
from localserve.kernels.triton.cache import write_kv
from localserve.kernels.triton.norm import rms_norm
from localserve.kernels.triton.rope_cache import rope_and_cache
from localserve.kernels.triton.rotary import rotary_embedding
from localserve.kernels.triton.sampling import gumbel_argmax

__all__ = ["act_and_mul", "gumbel_argmax", "paged_attention", "rms_norm", "rope_and_cache",
           "rotary_embedding", "write_kv"]
