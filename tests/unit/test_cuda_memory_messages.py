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
    refused_when_out_of_memory,
    step_does_not_fit,
    weights_do_not_fit,
)
from localserve.settings import Settings


def test_weights_refusal_for_gguf_names_what_is_kept_and_the_cpu_backend():
    error = weights_do_not_fit(3 * GiB, 8 * GiB, torch.bfloat16, gguf=True, blocks=True)
    assert isinstance(error, GpuMemoryError)
    text = str(error)
    assert "3.0 GiB of 8.0 GiB were free" in text
    assert "keeps GGUF Q4_0/Q5_0/Q8_0/Q4_K/Q5_K/Q6_K blocks as they are" in text
    assert "other types in bfloat16" in text and "Q4_K_M" in text and "--backend cpu" in text
    # No advice this backend cannot follow: it loads neither AWQ nor GPTQ.
    assert "AWQ" not in text and "GPTQ" not in text


def test_weights_refusal_with_gguf_blocks_off_says_they_are_dequantized():
    text = str(weights_do_not_fit(3 * GiB, 8 * GiB, torch.bfloat16, gguf=True))
    assert "dequantized the GGUF weights to bfloat16" in text and "--backend cpu" in text
    assert "LOCALSERVE_GGUF_BLOCKS=1" in text  # keeping the blocks is the fix
    assert "quantization" not in text  # a smaller one would be dequantized all the same


def test_weights_refusal_for_float_checkpoints_names_the_dtype_and_gguf():
    text = str(weights_do_not_fit(1 * GiB, 6 * GiB, torch.float16, gguf=False))
    assert "holds the weights in float16" in text and "smaller model" in text
    assert "GGUF quantization of this one (e.g. Q4_K_M" in text and "--backend cpu" in text


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


def capture_error_after(oom: BaseException) -> RuntimeError:
    """The error torch.cuda.graph's __exit__ raises when an OOM ended the capture: its own,
    with the OOM as implicit context."""
    with pytest.raises(RuntimeError, match="capture failed") as caught:
        try:
            raise oom
        except RuntimeError:
            raise RuntimeError("capture failed after an earlier error")  # noqa: B904
    return caught.value


def test_out_of_memory_is_found_behind_the_error_it_caused():
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory")
    assert out_of_memory(capture_error_after(oom))
    assert out_of_memory(oom)
    assert not out_of_memory(capture_error_after(RuntimeError("an illegal memory access")))
    assert not out_of_memory(None)


@pytest.mark.parametrize("raised", ["oom", "behind_capture"])
def test_start_up_out_of_memory_is_refused_after_releasing(raised):
    """The runner's start-up steps: an OOM becomes the step's refusal, chained to the OOM,
    and the runner's memory is released first (the refusal's traceback keeps the runner)."""
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory")
    error = oom if raised == "oom" else capture_error_after(oom)
    released = []
    refusal = graphs_do_not_fit(0.9, 8 * GiB)
    with pytest.raises(GpuMemoryError) as caught, \
            refused_when_out_of_memory(lambda: refusal, lambda: released.append(True)):
        raise error
    assert caught.value is refusal and caught.value.__cause__ is error
    assert released == [True]


def test_other_start_up_errors_pass_through_unreleased():
    released = []
    with pytest.raises(RuntimeError, match="illegal memory access"), \
            refused_when_out_of_memory(lambda: graphs_do_not_fit(0.9, 8 * GiB),
                                       lambda: released.append(True)):
        raise RuntimeError("an illegal memory access")
    assert released == []
