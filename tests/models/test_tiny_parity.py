"""Our models vs HF transformers on tiny random checkpoints, every architecture and format.

Both sides run in fp32 (HF with eager attention). Tolerance: max |ours - hf| <= 1e-5 *
max |hf| over the compared logits (measured: <= 5e-7 relative). Covered per case: prefill +
16 greedy decode steps; chunked prefill (later chunks attend to the cached prefix); a prefix
hit (a second sequence reusing the first one's full blocks) batched with a decode step.
Gemma 3's prompts are longer than its sliding window (8) so windowed layers matter.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from localserve.config import ModelConfig
from localserve.loader import load_model
from tests.helpers.paged import Chunk, PagedDriver
from tests.helpers.tiny_models import ARCHITECTURES, VOCAB, make_tiny_checkpoint

REL_TOL = 1e-5
CASES = [(arch, fmt) for arch in ARCHITECTURES for fmt in ("safetensors", "gguf-f32",
                                                             "gguf-q8_0")]
CASES += [("llama", "gguf-f16"), ("gemma3_text", "gguf-f16"), ("qwen2", "gguf-bf16")]


def prompt_ids(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (n,), generator=g).tolist()


def hf_logits(hf_model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(torch.tensor([ids])).logits[0].float()  # [len, vocab]


def assert_close(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    err = (ours - ref).abs().max().item()
    scale = ref.abs().max().item()
    assert err <= REL_TOL * max(scale, 1.0), f"{what}: max err {err:.3g} (scale {scale:.3g})"


@pytest.fixture(scope="module", params=CASES, ids=[f"{a}-{f}" for a, f in CASES])
def case(request, tmp_path_factory):
    arch, fmt = request.param
    ckpt = make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), arch, fmt)
    loaded = load_model(ModelConfig(model=str(ckpt.path)), torch.device("cpu"), torch.float32)
    return ckpt, loaded


def prompt_len(arch: str) -> int:
    return 21 if arch == "gemma3_text" else 11  # gemma: > 2x its sliding window of 8


def test_arch_parsed_like_hf(case):
    ckpt, loaded = case
    cfg, arch = ckpt.hf_model.config, loaded.arch
    assert arch.num_layers == cfg.num_hidden_layers
    assert arch.head_dim == (getattr(cfg, "head_dim", None)
                             or cfg.hidden_size // cfg.num_attention_heads)
    assert arch.tie_word_embeddings == cfg.tie_word_embeddings
    if hasattr(cfg, "layer_types") and cfg.layer_types is not None:
        assert list(arch.layer_types) == list(cfg.layer_types)
    assert loaded.spec.vocab_size == VOCAB and loaded.spec.num_layers == cfg.num_hidden_layers


def test_prefill_and_greedy_decode(case):
    ckpt, loaded = case
    prompt = prompt_ids(prompt_len(ckpt.model_type), seed=1)
    driver = PagedDriver(loaded.model, loaded.arch, block_size=4)
    generated, ours = driver.greedy(prompt, 16)
    ref = hf_logits(ckpt.hf_model, prompt + generated[:-1])[len(prompt) - 1:]
    assert_close(ours, ref, "prefill + decode logits")
    # Same greedy path wherever HF's choice is not a near-tie.
    top2 = ref.topk(2, dim=-1).values
    decided = (top2[:, 0] - top2[:, 1]) > 1e-3 * ref.abs().max()
    assert torch.equal(ref.argmax(-1)[decided], torch.tensor(generated)[decided])


def test_chunked_prefill(case):
    ckpt, loaded = case
    prompt = prompt_ids(prompt_len(ckpt.model_type), seed=2)
    driver = PagedDriver(loaded.model, loaded.arch, block_size=4)
    table = driver.alloc(len(prompt))
    cuts = [0, 5, 9, len(prompt)]  # chunk edges off the block edges on purpose
    rows = [driver.step([Chunk(prompt[a:b], a, table)]) for a, b in itertools.pairwise(cuts)]
    assert_close(torch.cat(rows), hf_logits(ckpt.hf_model, prompt), "chunked prefill")


def test_prefix_hit_in_a_mixed_batch(case):
    ckpt, loaded = case
    bs = 4
    n = prompt_len(ckpt.model_type)
    a = prompt_ids(n, seed=3)
    driver = PagedDriver(loaded.model, loaded.arch, block_size=bs)
    table_a = driver.alloc(n + 1)
    first = driver.step([Chunk(a, 0, table_a)])
    next_a = int(first[-1].argmax())
    shared = (n - 1) // bs  # full blocks of A that B reuses
    b = a[:shared * bs] + prompt_ids(7, seed=4)
    table_b = table_a[:shared] + driver.alloc(len(b) - shared * bs)
    # One step: A decodes one token while B computes only its uncached suffix.
    out = driver.step([Chunk([next_a], n, table_a), Chunk(b[shared * bs:], shared * bs,
                                                          table_b)])
    assert_close(out[:1], hf_logits(ckpt.hf_model, [*a, next_a])[-1:], "decode next to prefill")
    assert_close(out[1:], hf_logits(ckpt.hf_model, b)[shared * bs:], "prefix-hit suffix")


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_keep_quantized_matches_dequantized(tmp_path, arch):
    ckpt = make_tiny_checkpoint(tmp_path, arch, "gguf-q8_0")
    cfg = ModelConfig(model=str(ckpt.path))
    deq = load_model(cfg, torch.device("cpu"), torch.float32)
    raw = load_model(cfg, torch.device("cpu"), torch.float32, keep_quantized=True)
    q_proj = raw.model.model.layers[0].self_attn.q_proj
    assert q_proj.qweight.dtype == torch.uint8 and not hasattr(q_proj, "weight")
    assert raw.model.model.embed_tokens.qtype == 8  # Q8_0
    assert raw.model.model.layers[0].self_attn.v_proj.qtype == 6  # Q5_0
    prompt = prompt_ids(prompt_len(arch), seed=5)
    a = PagedDriver(deq.model, deq.arch).step([Chunk(prompt, 0, list(range(8)))])
    b = PagedDriver(raw.model, raw.arch).step([Chunk(prompt, 0, list(range(8)))])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert raw.spec.num_params == deq.spec.num_params
    assert raw.spec.quantization == "Q8_0"
