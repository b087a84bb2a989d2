"""Our Gemma 3 on the real default GGUF (Gemma 3 270M, Q4_K_M: Q8_0/Q5_0/Q4_K/Q6_K tensors).

The slow test compares with transformers' Gemma3ForCausalLM loaded from the same GGUF (fp32,
eager): max |logit diff| <= 1e-4 * max |logit| (measured 1.3e-5 on a scale of 25, i.e. 5e-7
relative) and the same argmax at every position. Its load takes minutes, hence `slow`; the
fast tests check the real model's internal consistency and a known answer.
"""

from __future__ import annotations

import os

import pytest
import torch

from localserve.config import ModelConfig, default_model_path
from localserve.loader import load_model
from localserve.tokenizer import load_tokenizer
from tests.helpers.paged import Chunk, PagedDriver

CPU = torch.device("cpu")
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def gemma():
    return load_model(ModelConfig(), CPU, torch.float32)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(None)


def prefill(loaded, ids: list[int], last_only: bool = False) -> torch.Tensor:
    driver = PagedDriver(loaded.model, loaded.arch, num_blocks=64, block_size=16)
    return driver.step([Chunk(ids, 0, list(range(-(-len(ids) // 16))))], last_only)


def test_default_model_spec(gemma):
    spec, arch = gemma.spec, gemma.arch
    assert (spec.architecture, spec.num_layers, spec.num_kv_heads, spec.head_dim) == (
        "gemma3_text", 18, 1, 256)
    assert spec.vocab_size == 262144 and spec.quantization == "Q4_K_M"
    assert arch.sliding_window == 512 and arch.layer_types.count("full_attention") == 3
    assert 260e6 < spec.num_params < 280e6
    assert gemma.model.lm_head.weight is gemma.model.model.embed_tokens.weight


def test_greedy_matches_transformers_ids(gemma, tok):
    # transformers 5.23 Gemma3ForCausalLM on the same GGUF, fp32, greedy (make_golden.py).
    expected = [506, 5279, 529, 506, 2891, 529, 7001, 236761]
    ids = tok.encode(PROMPT)
    assert ids == [2, 818, 5279, 529, 7001, 563]
    out, _ = PagedDriver(gemma.model, gemma.arch, block_size=4).greedy(ids, len(expected))
    assert out == expected
    assert tok.decode(out) == " the capital of the country of France."


def test_long_prompt_chunked_equals_whole(gemma, tok):
    """> 512 tokens: sliding layers drop the start; chunks must see exactly the same keys."""
    # (logits of the last token only: the 262k-row lm_head dominates a CPU prefill)
    text = "\n".join(f"Fact {i}: the number {i} squared is {i * i}." for i in range(1, 33))
    ids = tok.encode(text)
    assert 512 + 16 < len(ids) < 600
    whole = prefill(gemma, ids, last_only=True)[-1]
    driver = PagedDriver(gemma.model, gemma.arch, num_blocks=64, block_size=16)
    table = list(range(-(-len(ids) // 16)))
    for start in range(0, len(ids), 200):
        last = driver.step([Chunk(ids[start:start + 200], start, table)], last_only=True)[-1]
    torch.testing.assert_close(last, whole, rtol=0, atol=1e-4 * whole.abs().max().item())


def test_keep_quantized_matches_dequantized(gemma, tok):
    raw = load_model(ModelConfig(), CPU, torch.float32, keep_quantized=True)
    types = {m.qtype for m in raw.model.modules() if hasattr(m, "qtype")}
    assert types == {6, 8, 12, 14}  # Q5_0, Q8_0, Q4_K, Q6_K
    ids = tok.encode(PROMPT)
    a, b = prefill(gemma, ids, last_only=True)[-1], prefill(raw, ids, last_only=True)[-1]
    torch.testing.assert_close(b, a, rtol=0, atol=1e-4 * a.abs().max().item())


@pytest.mark.slow
def test_matches_transformers_on_the_same_gguf(gemma, tok):
    from transformers import Gemma3ForCausalLM

    folder, name = os.path.split(default_model_path())
    hf = Gemma3ForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                           attn_implementation="eager").eval()
    ids = tok.encode(PROMPT)
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].float()
    ours = prefill(gemma, ids)
    assert (ours - ref).abs().max() <= 1e-4 * ref.abs().max()
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))
