"""The GPU runner's refusals name fixes that work on it, and its KV page layout (the runner
itself needs a GPU)."""

from __future__ import annotations

import torch

from localserve.backends.cuda.runner import GiB, GpuMemoryError, weights_do_not_fit


def test_weights_refusal_says_gguf_is_dequantized_and_names_the_cpu_backend():
    error = weights_do_not_fit(3 * GiB, 8 * GiB, torch.bfloat16, gguf=True)
    assert isinstance(error, GpuMemoryError)
    text = str(error)
    assert "3.0 GiB of 8.0 GiB were free" in text
    assert "dequantizes GGUF weights to bfloat16" in text and "--backend cpu" in text
    # No advice this backend cannot follow: it loads neither AWQ nor GPTQ, and a smaller GGUF
    # quantization is dequantized all the same.
    assert "AWQ" not in text and "quantized checkpoint" not in text


def test_weights_refusal_for_float_checkpoints_names_the_dtype():
    text = str(weights_do_not_fit(1 * GiB, 6 * GiB, torch.float16, gguf=False))
    assert "holds the weights in float16" in text and "smaller model" in text


def test_kv_pages_are_stored_head_by_head():
    """The GPU runner's pages: the [blocks, block_size, kv_heads, head_dim] view the kernels
    take, stored head by head (kernels/triton/cache.py; H100 figures in docs/benchmarks.md)."""
    from types import SimpleNamespace

    from localserve.backends.cuda.runner import CudaModelRunner

    runner = SimpleNamespace(kv_dtype=torch.bfloat16, device=torch.device("cpu"))
    pages = CudaModelRunner._empty_cache(runner, (3, 16, 8, 128))
    assert pages.shape == (3, 16, 8, 128) and pages.dtype == torch.bfloat16
    assert pages.stride() == (16 * 8 * 128, 128, 16 * 128, 1)
