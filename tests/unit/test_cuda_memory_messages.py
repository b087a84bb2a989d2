"""The GPU runner's refusals name fixes that work on it (the runner itself needs a GPU)."""

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
