"""The cuda backend on the default model (Gemma 3 270M, Q4_K_M GGUF) vs the HF transformers
goldens (tests/e2e/golden/make_golden.py: fp32 on the same dequantized GGUF).

What a user's `localserve up --backend cuda` serves: the real GGUF dequantized onto the GPU,
its 1:5 sliding-window / global layers, the real tokenizer, the Triton kernels and CUDA graphs.
fp32 must give the goldens' tokens, bf16 (the GPU default) may leave them only at a near-tie
(tests/helpers/near_tie.py), in a batch of all prompts, alone, and from the prefix cache. The
engine takes 512 tokens a step, so the first run of the 1,093-token prompt is a chunked
prefill. Skipped without a GPU; divergences are printed (run with -s) for the closing note.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from localserve import LLM, SamplingParams
from tests.helpers.near_tie import golden_divergences

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "gemma3_270m_greedy.json")

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs an NVIDIA/AMD GPU (the H100 benchmark box)")]


@pytest.fixture(scope="module")
def golden() -> dict:
    with open(GOLDEN) as f:
        return json.load(f)


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True, logprobs=5)


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def llm(request):
    engine = LLM(backend="cuda", dtype=request.param, max_num_seqs=8,
                 max_num_batched_tokens=512, gpu_memory_utilization=0.3)
    assert engine.engine.info.backend == "cuda"
    yield request.param, engine
    engine.engine.shutdown()


def test_tokenizer_matches_golden_ids(llm, golden):
    _, engine = llm
    for key, ref in golden["prompts"].items():
        assert engine.tokenizer.encode(ref["text"]) == ref["prompt_ids"], key


def test_all_prompts_in_one_batch(llm, golden):
    dtype, engine = llm
    keys = list(golden["prompts"])
    outs = engine.generate([golden["prompts"][k]["prompt_ids"] for k in keys],
                           greedy(golden["num_tokens"]))
    found = golden_divergences(golden, keys, outs)
    print(f"default model, cuda {dtype}, one batch: divergences {found}")
    if dtype == "float32":
        assert not found, f"fp32 must give the goldens' tokens: {found}"


def test_each_prompt_alone(llm, golden):
    dtype, engine = llm
    found = {}
    for key, ref in golden["prompts"].items():
        (out,) = engine.generate([ref["prompt_ids"]], greedy(golden["num_tokens"]))
        found |= golden_divergences(golden, [key], [out])
    print(f"default model, cuda {dtype}, alone: divergences {found}")
    if dtype == "float32":
        assert not found, f"fp32 must give the goldens' tokens: {found}"


def test_long_prompt_chunked_behind_a_cached_prefix(llm, golden):
    """The long prompt (1,093 tokens, past the 512-token sliding window) again, now that its
    blocks are cached, in a batch with the short prompts: its prefill starts after the cached
    blocks."""
    dtype, engine = llm
    keys = list(golden["prompts"])
    long = golden["prompts"]["long"]["prompt_ids"]
    engine.generate([long], greedy(1))  # fills the prefix cache
    hits = engine.engine.scheduler.prefix_cache_hits
    outs = engine.generate([golden["prompts"][k]["prompt_ids"] for k in keys],
                           greedy(golden["num_tokens"]))
    assert engine.engine.scheduler.prefix_cache_hits > hits, "the cached prefix was not reused"
    found = golden_divergences(golden, keys, outs)
    print(f"default model, cuda {dtype}, cached prefix + chunks: divergences {found}")
    if dtype == "float32":
        assert not found, f"fp32 must give the goldens' tokens: {found}"
    engine.engine.block_manager.check_integrity([])
