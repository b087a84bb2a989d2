"""IncrementalDetokenizer: pieces concatenate to decode(outputs), never end mid-character.

Property-tested over random ids of the default model's tokenizer (SentencePiece with byte
fallback: emoji and CJK come as <0xNN> runs) and of a tiny byte-level BPE, fed in random
chunk sizes after random prompts, with and without skipping special tokens.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localserve.detokenizer import IncrementalDetokenizer
from localserve.tokenizer import load_tokenizer
from tests.helpers.tiny_models import build_tiny_tokenizer, save_tiny_tokenizer

MULTIBYTE = "😀🎉👍🏽 東京 café ñ Ünïcödé — ∑∫ 한국어 عربى \u200b"


@pytest.fixture(scope="module")
def gemma():
    return load_tokenizer(None)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_tokenizer(save_tiny_tokenizer(build_tiny_tokenizer(),
                                              tmp_path_factory.mktemp("tiny")))


def id_pools(tok) -> dict[str, list[int]]:
    backend = tok.backend
    byte_ids = [i for i in (backend.token_to_id(f"<0x{b:02X}>") for b in range(256))
                if i is not None]
    return {"bytes": byte_ids or list(range(4, min(tok.vocab_size, 300))),
            "multibyte": sorted(set(tok.encode(MULTIBYTE, add_special_tokens=False))),
            "special": sorted(tok.all_special_ids)[:64]}


def token_ids(tok) -> st.SearchStrategy[int]:
    pools = id_pools(tok)
    return st.one_of(st.integers(0, tok.vocab_size - 1), st.sampled_from(pools["bytes"]),
                     st.sampled_from(pools["multibyte"]), st.sampled_from(pools["special"]))


def run(tok, prompt: list[int], outputs: list[int], chunks: list[int], skip: bool) -> list[str]:
    detok = IncrementalDetokenizer(tok, prompt, skip_special_tokens=skip)
    pieces, i, k = [], 0, 0
    while i < len(outputs):
        n = chunks[k % len(chunks)]
        k += 1
        pieces.append(detok.add(outputs[i:i + n]))
        i += n
    pieces.append(detok.flush())
    return pieces


def check_property(tok, data) -> None:
    ids = token_ids(tok)
    prompt = data.draw(st.lists(ids, max_size=8), label="prompt")
    outputs = data.draw(st.lists(ids, max_size=40), label="outputs")
    chunks = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=4), label="chunks")
    skip = data.draw(st.booleans(), label="skip_special_tokens")
    pieces = run(tok, prompt, outputs, chunks, skip)
    assert "".join(pieces) == tok.decode(outputs, skip_special_tokens=skip)
    for piece in pieces[:-1]:  # only the final flush may end mid-character
        assert not piece.endswith("\ufffd")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_default_model_tokenizer(gemma, data):
    check_property(gemma, data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_tiny_byte_level_tokenizer(tiny, data):
    check_property(tiny, data)


@pytest.mark.parametrize("name", ["gemma", "tiny"])
def test_streamed_text_is_whole_characters(name, request):
    tok = request.getfixturevalue(name)
    text = "Hi " + MULTIBYTE + " end."
    ids = tok.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, tok.encode("Prompt:"))
    pieces = [detok.add([t]) for t in ids] + [detok.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert len([p for p in pieces if p]) > len(ids) // 3  # streamed, not all at the end


def test_special_tokens_skipped_or_kept(gemma):
    ids = [*gemma.encode("Hello", add_special_tokens=False), 106]  # <end_of_turn>
    skipped = IncrementalDetokenizer(gemma, [2], skip_special_tokens=True)
    kept = IncrementalDetokenizer(gemma, [2], skip_special_tokens=False)
    assert skipped.add(ids) + skipped.flush() == "Hello"
    assert kept.add(ids) + kept.flush() == "Hello<end_of_turn>"


def test_work_per_token_is_constant(gemma):
    """O(1): the ids decoded per step do not grow with the output length."""
    decoded = []

    class Counting:
        def __getattr__(self, name):
            return getattr(gemma, name)

        def decode(self, ids, skip_special_tokens=True):
            decoded.append(len(ids))
            return gemma.decode(ids, skip_special_tokens)

    ids = gemma.encode("The quick brown fox 😀 jumps over the lazy dog. " * 150,
                       add_special_tokens=False)
    detok = IncrementalDetokenizer(Counting(), [2])
    text = "".join(detok.add([t]) for t in ids) + detok.flush()
    assert text == gemma.decode(ids)
    assert max(decoded) <= 16 and len(ids) > 1500  # past the 1024-token trim too
