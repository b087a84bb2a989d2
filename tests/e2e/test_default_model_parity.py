"""Greedy parity of the engine (reference backend) with HF transformers on the default model.

Goldens come from tests/e2e/golden/make_golden.py (transformers, fp32, same dequantized GGUF).
Checked alone, all prompts in one batch, and with a KV pool so small that preemption happens
mid-run. Equality is expected in fp32; a divergence must be a near-tie (tests/helpers/near_tie.py)
and is reported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from localserve import LLM, SamplingParams
from tests.helpers.near_tie import golden_divergences

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "gemma3_270m_greedy.json")


@pytest.fixture(scope="module")
def golden() -> dict:
    with open(GOLDEN) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(backend="reference", max_num_batched_tokens=1024)


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True, logprobs=5)




def test_long_prompt_exceeds_sliding_window(golden):
    assert len(golden["prompts"]["long"]["prompt_ids"]) > 600


def test_tokenizer_matches_reference_ids(llm, golden):
    for key, ref in golden["prompts"].items():
        assert llm.tokenizer.encode(ref["text"]) == ref["prompt_ids"], key


def test_chat_template_matches_golden_chat_prompt(llm, golden):
    text = llm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Write a haiku about the sea."}])
    ids = llm.tokenizer.encode(text, add_special_tokens=False)
    assert ids == golden["prompts"]["chat"]["prompt_ids"]


def test_each_prompt_alone(llm, golden):
    divergences = {}
    for key, ref in golden["prompts"].items():
        (out,) = llm.generate([ref["prompt_ids"]], greedy(golden["num_tokens"]))
        divergences |= golden_divergences(golden, [key], [out])
    assert not divergences, f"near-tie divergences: {divergences}"


def test_all_prompts_in_one_batch(llm, golden):
    keys = list(golden["prompts"])
    outs = llm.generate([golden["prompts"][k]["prompt_ids"] for k in keys],
                        greedy(golden["num_tokens"]))
    divergences = golden_divergences(golden, keys, outs)
    assert not divergences, f"near-tie divergences: {divergences}"


def test_tiny_pool_preempts_mid_run(golden):
    # 76 blocks of 16 = 1216 tokens: the long prompt (1093) plus the others (84 blocks in all)
    # cannot all stay resident while 32 tokens each are generated: preemption must happen.
    llm = LLM(backend="reference", num_kv_blocks=76, max_num_batched_tokens=256)
    keys = list(golden["prompts"])
    outs = llm.generate([golden["prompts"][k]["prompt_ids"] for k in keys],
                        greedy(golden["num_tokens"]))
    assert llm.engine.scheduler.num_preempted_total > 0
    divergences = golden_divergences(golden, keys, outs)
    assert not divergences, f"near-tie divergences: {divergences}"
    llm.engine.block_manager.check_integrity([])


@pytest.mark.slow
def test_regenerated_goldens_match_stored(tmp_path, golden):
    """Re-runs transformers now and compares with the stored ids (catches stale goldens)."""
    out = tmp_path / "golden.json"
    script = os.path.join(os.path.dirname(__file__), "golden", "make_golden.py")
    subprocess.run([sys.executable, script, str(out)], check=True, timeout=1200)
    fresh = json.loads(out.read_text())
    for key, ref in golden["prompts"].items():
        assert fresh["prompts"][key]["prompt_ids"] == ref["prompt_ids"]
        assert fresh["prompts"][key]["greedy_ids"] == ref["greedy_ids"]


def test_default_model_overflows_float16():
    """Why resolve_dtype never gives Gemma 3 float16 (`ModelArchConfig.overflows_fp16`): the
    default model's activations leave fp16's range, its logits turn NaN; bf16 keeps fp32's
    greedy tokens. Should a model file stop overflowing, this fails and the rule is stale."""
    import torch

    from localserve.config import ModelConfig, default_model_path
    from localserve.loader import load_model
    from localserve.tokenizer import load_tokenizer
    from tests.helpers.paged import PagedDriver

    prompt = load_tokenizer(default_model_path()).encode(
        "The capital of France is Paris. The capital of Germany is")
    tokens = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        loaded = load_model(ModelConfig(), torch.device("cpu"), dtype)
        assert loaded.arch.overflows_fp16 and loaded.dtype is dtype
        driver = PagedDriver(loaded.model, loaded.arch, num_blocks=8, block_size=16, dtype=dtype)
        tokens[dtype], logits = driver.greedy(prompt, 4)
        if dtype is torch.float16:
            assert not torch.isfinite(logits).all()
    assert tokens[torch.bfloat16] == tokens[torch.float32]
