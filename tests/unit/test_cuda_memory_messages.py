"""The GPU runner's refusals name fixes that work on it (the runner itself needs a GPU)."""

from __future__ import annotations

import pytest
import torch

from localserve.backends.cuda.runner import (
    GiB,
    GpuMemoryError,
    graphs_do_not_fit,
    kv_cache_does_not_fit,
    out_of_memory,
    step_does_not_fit,
    weights_do_not_fit,
)
from localserve.settings import Settings


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


def flags() -> set[str]:
    """The command line's flags (built from the settings' fields)."""
    return {"--" + name.replace("_", "-") for name in Settings.model_fields}


def named_flags(text: str) -> set[str]:
    return {word.strip(".,()") for word in text.split() if word.startswith(("--", "(--"))}


@pytest.mark.parametrize("error", [
    step_does_not_fit(16384, 15 * GiB, 16 * GiB),
    kv_cache_does_not_fit(4000, 3 * GiB),
    graphs_do_not_fit(0.98, 8 * GiB),
    weights_do_not_fit(3 * GiB, 8 * GiB, torch.bfloat16, gguf=True),
], ids=["step", "kv_cache", "graphs", "weights"])
def test_refusals_name_flags_that_exist(error):
    assert isinstance(error, GpuMemoryError)  # a ValueError: the CLI prints it, no traceback
    named = named_flags(str(error))
    assert named and named <= flags(), named - flags()


def test_refusal_numbers():
    assert "one step of 16384 tokens" in str(step_does_not_fit(16384, 15 * GiB, 16 * GiB))
    assert "15.00 GiB on a 16.0 GiB GPU" in str(step_does_not_fit(16384, 15 * GiB, 16 * GiB))
    assert "4000 blocks (3.00 GiB)" in str(kv_cache_does_not_fit(4000, 3 * GiB))
    text = str(graphs_do_not_fit(0.98, 8 * GiB))
    assert "--gpu-memory-utilization 0.98 of 8.0 GiB" in text and "--enforce-eager" in text


def test_out_of_memory_is_found_behind_the_error_it_caused():
    """An OOM inside a graph capture surfaces as the capture's error, the OOM its context."""
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory")
    try:
        try:
            raise oom
        except RuntimeError:
            # Implicit context, as torch.cuda.graph's __exit__ raises it.
            raise RuntimeError("capture failed after an earlier error")  # noqa: B904
    except RuntimeError as e:
        assert out_of_memory(e)
    assert out_of_memory(oom)
    assert not out_of_memory(RuntimeError("an illegal memory access"))
    assert not out_of_memory(None)
