"""localserve.kernels.cpu: C kernels (GGUF matmuls, paged attention, norms) for the CPU backend.

The shared library is plain C loaded with ctypes; see _loader.py for how it is found or built.
`available()` is False when no library could be had: callers then fall back to torch.
"""

if __name__ != "localserve.kernels.cpu":
    raise ImportError(f"import this package as 'localserve.kernels.cpu', not {__name__!r}")

from localserve.kernels.cpu._runtime import (
    available,
    best_isa,
    get_num_threads,
    isa,
    set_isa,
    set_num_threads,
)
from localserve.kernels.cpu.attention import paged_attention, write_kv
from localserve.kernels.cpu.ops import (
    GGUFWeight,
    act_and_mul,
    embedding,
    gguf_matmul,
    gguf_matmul_multi,
    prepare_weight,
    rms_norm,
    rotary_embedding,
)

__all__ = ["GGUFWeight", "act_and_mul", "available", "best_isa", "embedding",
           "get_num_threads", "gguf_matmul", "gguf_matmul_multi", "isa", "paged_attention",
           "prepare_weight", "rms_norm", "rotary_embedding", "set_isa", "set_num_threads",
           "write_kv"]
