"""load_tokenizer from HF folders and GGUF files: ids, chat templates, stop tokens, errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from localserve.tokenizer import GEMMA_CHAT_TEMPLATE, load_tokenizer
from tests.helpers.tiny_models import (
    TINY_CHAT_TEMPLATE,
    build_tiny_hf_model,
    build_tiny_tokenizer,
    save_tiny_tokenizer,
    write_gguf,
)

TEXTS = ["Hello, world!", "Ünïcödé tèxt — naïve café, 東京 😀🎉", "def f(x):\n    return x\n",
         "", " leading space", "<s>starts with BOS", "in-text </s> special"]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]


@pytest.fixture(scope="module")
def tiny_sources(tmp_path_factory):
    """(HF folder, GGUF file) holding the same tiny byte-level BPE tokenizer."""
    root = tmp_path_factory.mktemp("tok")
    tok = build_tiny_tokenizer()
    folder = save_tiny_tokenizer(tok, root / "hf")
    gguf_path = root / "tiny.gguf"
    write_gguf(build_tiny_hf_model("llama"), gguf_path, "f32", tokenizer=tok)
    return folder, gguf_path


def test_hf_folder_matches_transformers(tiny_sources):
    from transformers import AutoTokenizer

    folder, _ = tiny_sources
    ours, ref = load_tokenizer(folder), AutoTokenizer.from_pretrained(str(folder))
    for text in TEXTS[:-2]:
        assert ours.encode(text) == ref.encode(text), text
        assert ours.encode(text, add_special_tokens=False) == ref.encode(
            text, add_special_tokens=False), text
        ids = ref.encode(text)
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)
        assert ours.decode(ids, skip_special_tokens=False) == ref.decode(ids)
    assert ours.bos_token_id == 1 and ours.eos_token_ids == frozenset({2})
    assert ours.convert_ids_to_tokens([1, 2]) == ["<s>", "</s>"]
    assert ours.apply_chat_template(CHAT) == ref.apply_chat_template(
        CHAT, tokenize=False, add_generation_prompt=True)


def test_gguf_tokenizer_matches_hf_folder(tiny_sources):
    folder, gguf_path = tiny_sources
    hf, gguf = load_tokenizer(folder), load_tokenizer(gguf_path)
    for text in TEXTS:
        assert gguf.encode(text) == hf.encode(text), text
        assert gguf.decode(hf.encode(text)) == hf.decode(hf.encode(text))
    assert gguf.eos_token_ids == hf.eos_token_ids and gguf.bos_token_id == hf.bos_token_id
    assert gguf.vocab_size == hf.vocab_size
    assert gguf.chat_template == TINY_CHAT_TEMPLATE
    assert gguf.apply_chat_template(CHAT, add_generation_prompt=False) == (
        "<|system|>Be brief.</s><|user|>Hi there</s><|assistant|>Hello.</s><|user|>Bye</s>")


def test_bos_added_once(tiny_sources):
    tok = load_tokenizer(tiny_sources[0])
    assert tok.encode("hi")[0] == 1 and tok.encode("hi", add_special_tokens=False)[0] != 1
    ids = tok.encode("<s>hi")
    assert ids[0] == 1 and ids[1] != 1
    assert ids == tok.encode("<s>hi", add_special_tokens=False)


def test_no_chat_template_is_a_clear_error(tmp_path):
    tok = load_tokenizer(save_tiny_tokenizer(build_tiny_tokenizer(), tmp_path, None))
    with pytest.raises(ValueError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "nope.gguf")
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        load_tokenizer(tmp_path)


def test_loading_is_memoized(tiny_sources):
    assert load_tokenizer(tiny_sources[1]) is load_tokenizer(tiny_sources[1])


# -- the default model (Gemma 3 270M GGUF: no chat template inside) ---------------------------
@pytest.fixture(scope="module")
def gemma():
    return load_tokenizer(None)


def test_default_model_ids(gemma):
    # Reference ids from transformers' AutoTokenizer.from_pretrained(..., gguf_file=...).
    assert gemma.encode("Hello world 😀 é") == [2, 9259, 1902, 163543, 1559]
    assert gemma.encode("<start_of_turn>user\nhi<end_of_turn>", add_special_tokens=False) == [
        105, 2364, 107, 2202, 106]
    assert gemma.bos_token_id == 2
    assert gemma.eos_token_ids == frozenset({1, 106})  # <eos> and <end_of_turn>
    assert gemma.decode(gemma.encode("Hello world 😀 é")) == "Hello world 😀 é"
    assert gemma.byte_fallback and gemma.is_byte_token(gemma.backend.token_to_id("<0xF0>"))


def test_default_model_gemma_turn_format(gemma):
    assert gemma.chat_template is None
    text = gemma.apply_chat_template(CHAT)
    assert text == ("<bos><start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>\n"
                    "<start_of_turn>model\nHello.<end_of_turn>\n"
                    "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")
    assert gemma.encode(text) == gemma.encode(text, add_special_tokens=False)
    assert gemma.encode(text).count(2) == 1
    with pytest.raises(ValueError, match="alternate"):
        gemma.apply_chat_template([{"role": "user", "content": "a"},
                                   {"role": "user", "content": "b"}])


def test_gemma_template_matches_hf_renderer_on_list_content(gemma):
    from localserve.tokenizer import render_chat_template

    messages = [{"role": "user", "content": [{"type": "text", "text": " hi "}]}]
    assert render_chat_template(GEMMA_CHAT_TEMPLATE, messages, False, {"bos_token": "<bos>"}) \
        == "<bos><start_of_turn>user\nhi<end_of_turn>\n"


def test_template_kwargs_reach_the_template(tiny_sources):
    from localserve.tokenizer import Tokenizer

    base = load_tokenizer(tiny_sources[0])
    template = "{{ messages[0]['content'] }}{% if enable_thinking %}!{% endif %}"
    tok = Tokenizer(base.backend, bos_token_id=1, eos_token_ids={2}, special_tokens={},
                    chat_template=template, add_bos=True)
    messages = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(messages) == "hi"
    assert tok.apply_chat_template(messages, enable_thinking=True) == "hi!"


@pytest.fixture
def fresh_cache(monkeypatch, tmp_path) -> Iterator[Path]:
    """An empty conversion cache, and no tokenizer memoized in this process before or after."""
    from localserve import tokenizer as tokenizer_module

    monkeypatch.setenv("LOCALSERVE_CACHE_DIR", str(tmp_path / "cache"))
    tokenizer_module._load_cached.cache_clear()
    yield tmp_path / "cache"
    tokenizer_module._load_cached.cache_clear()


def test_default_model_vocabulary_round_trips(gemma):
    """The check every fresh sentencepiece conversion passes before it is cached."""
    from localserve.config import default_model_path
    from localserve.loader.gguf_reader import GGUFFile
    from localserve.tokenizer import _check_round_trip

    gguf = GGUFFile(default_model_path())
    _check_round_trip(gemma.backend, gguf.strings("tokenizer.ggml.tokens"),
                      gguf.metadata["tokenizer.ggml.token_type"], Path(default_model_path()))


def test_vocabulary_read_as_unigram_is_refused(monkeypatch, fresh_cache):
    """transformers < 5.18 built Gemma 3's GGUF vocabulary as a unigram model, which cuts its
    pieces apart (" capital" into four tokens): loading refuses it, names the fix, caches
    nothing."""
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import normalizers
    from tokenizers.models import Unigram

    from localserve import tokenizer as tokenizer_module
    from localserve.config import default_model_path
    from localserve.loader.gguf_reader import GGUFFile

    path = Path(default_model_path())
    gguf = GGUFFile(path)
    vocab = list(zip(gguf.strings("tokenizer.ggml.tokens"),
                     map(float, gguf.metadata["tokenizer.ggml.scores"]), strict=True))

    def as_unigram(_path):
        backend = RustTokenizer(Unigram(vocab, unk_id=3, byte_fallback=True))
        backend.normalizer = normalizers.Replace(" ", "\u2581")
        return backend

    monkeypatch.setattr(tokenizer_module, "_convert_gguf_tokenizer", as_unigram)
    with pytest.raises(ValueError, match=r"encode back to themselves.*transformers>=5\.18"):
        load_tokenizer(path)
    assert not list(fresh_cache.rglob("tokenizer.json"))


def test_transformers_without_the_gguf_converter_is_named(monkeypatch, fresh_cache):
    """transformers 5.17 (the GPU machine's) has no integrations.gguf.convert_gguf_tokenizer:
    a clear ValueError with the fix, not an ImportError traceback."""
    import sys
    import types

    from localserve.config import default_model_path

    monkeypatch.setitem(sys.modules, "transformers.integrations.gguf",
                        types.ModuleType("transformers.integrations.gguf"))
    with pytest.raises(ValueError, match=r"GGUF converter .* lacks: pip install -U "
                                         r"'transformers>=5\.18'"):
        load_tokenizer(default_model_path())


def test_llama_style_sentencepiece_gguf_passes_the_check(tmp_path, fresh_cache):
    """The check must not refuse a correct conversion of the other sentencepiece layout:
    Llama-2-style files (a space prefix, <unk> <s> </s>, 256 byte tokens, then the pieces, each
    scored by its merge rank), here trained on a few sentences."""
    import gguf
    from tokenizers import SentencePieceBPETokenizer

    text = ["the capital of france is paris and the capital of germany is berlin",
            "a quick brown fox jumps over the lazy dog while the cat sleeps",
            "tokenizers split words into pieces that the model has seen before"] * 20
    trained = SentencePieceBPETokenizer()
    trained.train_from_iterator(text, vocab_size=200, min_frequency=2, show_progress=False)
    pieces = [t for t, _ in sorted(trained.get_vocab().items(), key=lambda kv: kv[1])]
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *pieces]
    types = [2, 3, 3, *[6] * 256, *[1] * len(pieces)]
    path = tmp_path / "spm.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * 259 + [-float(i) for i in range(len(pieces))])
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_space_prefix(True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    tok = load_tokenizer(path)  # converts, checks, caches
    assert list(fresh_cache.rglob("tokenizer.json"))
    capital = tok.backend.token_to_id("\u2581capital")
    assert capital is not None and tok.encode("capital", add_special_tokens=False) == [capital]
    assert tok.decode(tok.encode("the capital of berlin")) == "the capital of berlin"
