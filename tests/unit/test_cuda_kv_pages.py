"""The GPU runner's KV page layout, checked without a GPU (the allocation is plain torch)."""

from __future__ import annotations

import torch


def test_kv_pages_are_stored_head_by_head():
    """The GPU runner's pages: the [blocks, block_size, kv_heads, head_dim] view the kernels
    take, stored head by head (kernels/triton/cache.py; H100 figures in docs/benchmarks.md)."""
    from types import SimpleNamespace

    from localserve.backends.cuda.runner import CudaModelRunner

    runner = SimpleNamespace(kv_dtype=torch.bfloat16, device=torch.device("cpu"))
    pages = CudaModelRunner._empty_cache(runner, (3, 16, 8, 128))
    assert pages.shape == (3, 16, 8, 128) and pages.dtype == torch.bfloat16
    assert pages.stride() == (16 * 8 * 128, 128, 16 * 128, 1)
