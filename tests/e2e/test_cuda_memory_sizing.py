"""GPU memory sizing on a real device: the KV pool follows --gpu-memory-utilization, and a
model or a --max-model-len that cannot fit is refused with the numbers and the fix.

These need a CUDA (or ROCm) GPU and are skipped without one: CI's machines have none; the
device runs (`benchmarks/gpu_session.sh`) run them. The messages' wording is checked on every
machine by tests/unit/test_cuda_memory_messages.py. Models are Llama-shaped configs with
random weights (`load_format="dummy"`), sized from the GPU's own total memory.
"""

from __future__ import annotations

import gc
import json
import math

import pytest
import torch

from localserve import LLM, SamplingParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm GPU")

GiB = 1 << 30
# 8 layers x 8 KV heads x head_dim 128, K and V in bf16: 32 KiB of KV cache a token.
SMALL = {"hidden_size": 1024, "intermediate_size": 2048, "num_hidden_layers": 8,
         "num_attention_heads": 8, "num_key_value_heads": 8, "head_dim": 128,
         "vocab_size": 1024, "max_position_embeddings": 262_144}
KV_BYTES_PER_TOKEN = (2 * SMALL["num_hidden_layers"] * SMALL["num_key_value_heads"]
                      * SMALL["head_dim"] * 2)


def write_config(tmp_path, **shape) -> str:
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
              "tie_word_embeddings": False, "torch_dtype": "bfloat16", **shape}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return str(path)


def free_gpu() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def total_memory() -> int:
    return torch.cuda.mem_get_info()[1]


def sized_pool(monkeypatch) -> list[int]:
    """Records what each engine's memory profile sized the KV pool to (in blocks)."""
    from localserve.backends.cuda.runner import CudaModelRunner

    sizes: list[int] = []
    profile = CudaModelRunner.profile_num_blocks

    def recorded(self) -> int:
        sizes.append(profile(self))
        return sizes[-1]

    monkeypatch.setattr(CudaModelRunner, "profile_num_blocks", recorded)
    return sizes


def build(config: str, **kw) -> LLM:
    return LLM(config, load_format="dummy", backend="cuda", dtype="bfloat16", **kw)


def refusal(config: str, **kw) -> str:
    """The text of the GpuMemoryError that building this engine must end in."""
    from localserve.backends.cuda.runner import GpuMemoryError

    with pytest.raises(GpuMemoryError) as refused:
        build(config, **kw)
    text = str(refused.value)
    del refused  # its traceback holds the failed engine
    free_gpu()
    return text


def test_kv_pool_follows_gpu_memory_utilization(tmp_path, monkeypatch):
    """Two engines one after the other at 30% and 50%: the second pool is larger by 20% of
    the GPU's memory, in tokens of this model (the weights and activations are the same), and
    each engine gives back all it allocated when it shuts down."""
    config = write_config(tmp_path, **SMALL)
    sizes = sized_pool(monkeypatch)
    pools = []
    free_gpu()
    before = torch.cuda.memory_allocated()
    for utilization in (0.3, 0.5):
        llm = build(config, gpu_memory_utilization=utilization, max_model_len=4096)
        block_size = llm.engine.config.cache.block_size
        pools.append(llm.engine.block_manager.num_blocks * block_size)
        llm.engine.shutdown()
        del llm
        free_gpu()
        # Before session 18 one cuBLAS workspace per captured graph stayed (1,056 MiB).
        assert torch.cuda.memory_allocated() - before < 16 << 20
    assert [s * block_size for s in sizes] == pools  # no cap on the pool in between
    expected = 0.2 * total_memory() / KV_BYTES_PER_TOKEN
    assert pools[1] - pools[0] == pytest.approx(expected, rel=0.03), pools
    assert pools[0] > 0.25 * total_memory() / KV_BYTES_PER_TOKEN  # the rest is the model's


def test_max_model_len_longer_than_the_pool_is_refused(tmp_path):
    """About 6 GiB for everything: the pool holds ~150k tokens, fewer than 262,144."""
    config = write_config(tmp_path, **SMALL)
    utilization = 6 * GiB / total_memory()
    text = refusal(config, gpu_memory_utilization=utilization, max_model_len=262_144)
    fits = int(text.split("the KV cache fits ")[1].split(" tokens")[0])
    assert 0 < fits < 262_144
    assert "--max-model-len 262144" in text and "raise --gpu-memory-utilization" in text


def test_weights_larger_than_the_gpu_are_refused(tmp_path):
    """Llama-3-70B-shaped layers, as many as make 1.3x the GPU's memory in bf16 weights."""
    hidden, inter, kv = 8192, 28672, 1024
    layer_bytes = 2 * (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inter)
    layers = math.ceil(1.3 * total_memory() / layer_bytes)
    config = write_config(tmp_path, hidden_size=hidden, intermediate_size=inter,
                          num_hidden_layers=layers, num_attention_heads=64,
                          num_key_value_heads=8, vocab_size=128256,
                          max_position_embeddings=8192)
    text = refusal(config, max_model_len=4096)
    assert "were free" in text and "smaller model" in text and "bfloat16" in text
    # Nothing of the half-loaded model stays behind: a small engine starts afterwards.
    llm = build(write_config(tmp_path, **SMALL), max_model_len=4096)
    out = llm.generate([[1, 2, 3]], SamplingParams(max_tokens=4, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 4
    llm.engine.shutdown()


def test_a_step_larger_than_the_gpu_is_refused(tmp_path):
    """A 4M-token step: its scratch KV alone is 128 GiB, so the sizing warm-up runs out."""
    tokens = 1 << 22
    config = write_config(tmp_path, **{**SMALL, "max_position_embeddings": tokens})
    text = refusal(config, max_model_len=4096, max_num_batched_tokens=tokens)
    assert f"one step of {tokens} tokens" in text and "--max-num-batched-tokens" in text


def test_graphs_out_of_memory_are_refused_and_eager_runs(tmp_path, monkeypatch):
    """Graph capture fits in the room the sizing warm-up's activations leave (even at
    --gpu-memory-utilization 1.0), so an allocation larger than the GPU inside the capture
    stands in for a GPU where it does not: the OOM surfaces inside torch's capture and must
    still be refused with the advice, and the advice, --enforce-eager, must start."""
    from localserve.backends.cuda import graphs
    forward = graphs.StepGraphs._forward

    def forward_then_oom(self, b: int) -> None:
        forward(self, b)
        if torch.cuda.is_current_stream_capturing():
            torch.empty(2 * total_memory(), dtype=torch.uint8, device="cuda")

    monkeypatch.setattr(graphs.StepGraphs, "_forward", forward_then_oom)
    config = write_config(tmp_path, **SMALL)
    text = refusal(config, max_model_len=4096)
    assert "capturing CUDA graphs ran out" in text and "--enforce-eager" in text
    llm = build(config, max_model_len=4096, enforce_eager=True)
    out = llm.generate([[1, 2, 3]] * 8, SamplingParams(max_tokens=4, ignore_eos=True))
    assert all(len(o.outputs[0].token_ids) == 4 for o in out)
    llm.engine.shutdown()
