"""Tokenizers from GGUF metadata or HF folders, behind one small API the engine and server use.

Encoding and decoding go straight to the Rust `tokenizers.Tokenizer` (no Python per token).
A GGUF vocabulary is converted with transformers' GGUF tokenizer builders once, then cached as
tokenizer.json under the cache dir (`$LOCALSERVE_CACHE_DIR`, else `$XDG_CACHE_HOME/localserve`,
else ~/.cache/localserve), keyed by the file's path, size and mtime; `load_tokenizer` also
memoizes per process. Chat templates render with transformers' jinja sandbox; Gemma files
without a template get the Gemma turn format.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# 2: conversions are checked (_check_round_trip) before they are cached; older entries were not.
_CACHE_VERSION = "2"
# A sentencepiece vocabulary's own pieces must encode back to themselves. transformers before
# 5.18 built Gemma 3's GGUF vocabulary (BPE, its merges left implicit) as a unigram model: 689
# of 1,000 sampled pieces came out cut apart (" capital" as four tokens, where the HF reference
# and llama.cpp give one), a wrong tokenizer that still runs. A correct conversion keeps all.
ROUND_TRIP_SAMPLE = 256
MIN_ROUND_TRIP = 0.9
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
# Gemma's turn format (system text folded into the first user turn, assistant -> model).
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set first_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set first_prefix = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for m in turns -%}"
    "{%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/...') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if m['role'] == 'assistant' else m['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_prefix if loop.first else '') }}"
    "{%- if m['content'] is string -%}{{ m['content'] | trim }}"
    "{%- else -%}{%- for part in m['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
_GEMMA_ARCHES = ("gemma", "gemma2", "gemma3", "gemma3_text")


class Tokenizer:
    """Text <-> token ids for one model, plus its chat template and stop tokens."""

    def __init__(self, backend: Any, *, bos_token_id: int | None, eos_token_ids: Iterable[int],
                 chat_template: str | None, special_tokens: Mapping[str, str | None],
                 add_bos: bool, add_eos: bool = False, architecture: str | None = None) -> None:
        self._backend = backend  # a tokenizers.Tokenizer
        self.bos_token_id = bos_token_id
        self.eos_token_ids: frozenset[int] = frozenset(eos_token_ids)
        self.chat_template = chat_template
        self.special_tokens = dict(special_tokens)  # bos_token, eos_token, ... -> text
        self.add_bos = add_bos
        self.add_eos = add_eos
        self.architecture = architecture
        added = backend.get_added_tokens_decoder()
        # Exactly the ids the Rust decoder drops with skip_special_tokens=True.
        self.all_special_ids: frozenset[int] = frozenset(i for i, t in added.items() if t.special)
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        self.byte_fallback = "ByteFallback" in repr(backend.decoder)

    @property
    def backend(self) -> Any:
        """The underlying `tokenizers.Tokenizer`."""
        return self._backend

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; special-token text (e.g. <start_of_turn>) maps to its id.

        With add_special_tokens, BOS is added unless the text already starts with it (a
        rendered chat template usually does), so a prompt never gets two BOS tokens.
        """
        bos = self.special_tokens.get("bos_token")
        if add_special_tokens and self.add_bos and bos and text.startswith(bos):
            ids = self._backend.encode(text, add_special_tokens=False).ids
            if self.add_eos and self.eos_token_ids:
                ids.append(self._primary_eos())
            return ids
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str | None]:
        return [self._backend.id_to_token(int(i)) for i in ids]

    def is_byte_token(self, token_id: int) -> bool:
        """A byte-fallback token (<0xNN>) whose text depends on the tokens around it."""
        if not self.byte_fallback:
            return False
        token = self._backend.id_to_token(int(token_id))
        return token is not None and _BYTE_TOKEN.fullmatch(token) is not None

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            **template_kwargs: Any) -> str:
        """The prompt text for `messages` (encode it with add_special_tokens=False).

        `template_kwargs` (e.g. tools=[...], enable_thinking=False) are passed to the template.
        """
        template = self.chat_template
        if template is None and self.architecture in _GEMMA_ARCHES:
            template = GEMMA_CHAT_TEMPLATE
        if template is None:
            raise ValueError("this model has no chat template (its tokenizer config and GGUF "
                             "metadata define none); use the completions API with a plain "
                             "prompt, or a model that ships a chat template")
        return render_chat_template(template, messages, add_generation_prompt,
                                    {**self.special_tokens, **template_kwargs})

    def _primary_eos(self) -> int:
        eos = self.special_tokens.get("eos_token")
        token_id = self._backend.token_to_id(eos) if eos else None
        return token_id if token_id is not None else min(self.eos_token_ids)

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_token_id}, "
                f"eos={sorted(self.eos_token_ids)}, "
                f"chat_template={self.chat_template is not None})")


def render_chat_template(template: str, messages: list[dict], add_generation_prompt: bool,
                         special_tokens: Mapping[str, Any]) -> str:
    """Renders a HF chat template in transformers' jinja sandbox.

    Raises ValueError for what the template rejects (e.g. roles that do not alternate).
    """
    from jinja2.exceptions import TemplateError

    extra = {k: v for k, v in special_tokens.items() if v is not None}
    try:
        try:
            from transformers.utils.chat_template_utils import render_jinja_template
        except ImportError:  # older transformers: a plain sandbox with the same basics
            return _render_sandboxed(template, messages, add_generation_prompt, extra)
        rendered, _ = render_jinja_template(conversations=[messages], chat_template=template,
                                            add_generation_prompt=add_generation_prompt,
                                            **extra)
    except TemplateError as e:
        raise ValueError(f"chat template: {e}") from e
    return rendered[0]


def _render_sandboxed(template: str, messages: list[dict], add_generation_prompt: bool,
                      extra: Mapping[str, Any]) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages,
                                             add_generation_prompt=add_generation_prompt, **extra)


# -- loading ----------------------------------------------------------------------------------
def load_tokenizer(source: str | os.PathLike[str] | None = None) -> Tokenizer:
    """The tokenizer of a .gguf file or an HF folder (None: the default model). Memoized."""
    if source is None:
        from localserve.config import default_model_path

        source = default_model_path()
    path = Path(os.path.expanduser(os.fspath(source))).resolve()
    if not path.exists():
        raise FileNotFoundError(f"tokenizer source {os.fspath(source)!r} does not exist; pass a "
                                ".gguf file or an HF folder with tokenizer.json")
    stat = path.stat()
    return _load_cached(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, size: int, mtime_ns: int) -> Tokenizer:
    p = Path(path)
    if p.is_dir():
        ggufs = sorted(p.glob("*.gguf"))
        if not (p / "tokenizer.json").exists() and not (p / "tokenizer_config.json").exists():
            if len(ggufs) == 1:
                return load_tokenizer(ggufs[0])
            raise FileNotFoundError(f"{path} has no tokenizer.json / tokenizer_config.json")
        return _from_hf_folder(p)
    return _from_gguf(p, size, mtime_ns)


def _cache_dir() -> Path:
    root = os.environ.get("LOCALSERVE_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "localserve" if xdg else Path.home() / ".cache" / "localserve"


def _from_gguf(path: Path, size: int, mtime_ns: int) -> Tokenizer:
    from tokenizers import Tokenizer as RustTokenizer

    from localserve.loader.gguf_reader import GGUFFile

    gguf = GGUFFile(path)
    meta = {k: v for k, v in gguf.metadata.items()
            if k.startswith(("tokenizer.", "general.architecture"))
            and k not in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                          "tokenizer.ggml.token_type", "tokenizer.ggml.merges")}
    if "tokenizer.ggml.tokens" not in gguf.metadata:
        raise ValueError(f"{path} carries no tokenizer (no tokenizer.ggml.tokens); pass a "
                         "tokenizer folder explicitly")
    arch = str(meta.get("general.architecture"))
    key = hashlib.sha256(f"{_CACHE_VERSION}|{path}|{size}|{mtime_ns}".encode()).hexdigest()[:24]
    cached = _cache_dir() / "tokenizers" / key / "tokenizer.json"
    backend = None
    if cached.exists():
        try:
            backend = RustTokenizer.from_file(str(cached))
        except Exception as e:  # a corrupt cache entry: rebuild it
            log.warning("ignoring unreadable cached tokenizer %s: %s", cached, e)
    if backend is None:
        backend = _convert_gguf_tokenizer(path)
        if meta.get("tokenizer.ggml.model") == "llama":  # sentencepiece
            _check_round_trip(backend, gguf.strings("tokenizer.ggml.tokens"),
                              gguf.metadata.get("tokenizer.ggml.token_type"), path)
        _save_atomically(backend, cached)
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token",
                            meta.get("tokenizer.ggml.model") == "llama"))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))

    def token(key: str) -> str | None:
        token_id = meta.get(f"tokenizer.ggml.{key}")
        return backend.id_to_token(int(token_id)) if token_id is not None else None

    bos_id = meta.get("tokenizer.ggml.bos_token_id")
    special = {"bos_token": token("bos_token_id"), "eos_token": token("eos_token_id"),
               "unk_token": token("unknown_token_id"), "pad_token": token("padding_token_id")}
    _set_post_processor(backend, special["bos_token"] if add_bos else None,
                        special["eos_token"] if add_eos else None)
    eos = {int(meta[f"tokenizer.ggml.{k}"]) for k in ("eos_token_id", "eot_token_id",
                                                      "eom_token_id")
           if meta.get(f"tokenizer.ggml.{k}") is not None}
    return Tokenizer(backend, bos_token_id=int(bos_id) if bos_id is not None else None,
                     eos_token_ids=eos | _extra_eos(backend, arch),
                     chat_template=meta.get("tokenizer.chat_template"), special_tokens=special,
                     add_bos=add_bos, add_eos=add_eos, architecture=arch)


def _convert_gguf_tokenizer(path: Path) -> Any:
    """transformers' GGUF -> tokenizers conversion (seconds for a 262k vocabulary)."""
    try:
        from transformers.integrations.gguf import convert_gguf_tokenizer, get_gguf_tokenizer
    except ImportError as e:  # before 5.18 (pyproject's floor) it lived elsewhere
        import transformers

        raise ValueError(
            f"reading {path.name}'s tokenizer needs transformers' GGUF converter "
            f"(transformers.integrations.gguf, 5.18 and later), which transformers "
            f"{transformers.__version__} lacks: pip install -U 'transformers>=5.18'") from e
    arch, tokenizer_dict, _ = get_gguf_tokenizer(str(path))
    backend, _ = convert_gguf_tokenizer(arch, tokenizer_dict)
    return backend


def _check_round_trip(backend: Any, tokens: Sequence[str], token_types: Sequence[int] | None,
                      path: Path) -> None:
    """Raises ValueError when the converted tokenizer cuts the vocabulary's own word pieces
    apart (a sample of the normal tokens that start a word, decoded then encoded again)."""
    import random

    import transformers

    pieces = [i for i, t in enumerate(tokens) if t.startswith("\u2581") and len(t) > 1
              and (token_types is None or int(token_types[i]) == 1)]  # 1: a normal token
    sample = random.Random(0).sample(pieces, min(len(pieces), ROUND_TRIP_SAMPLE))
    kept = sum(backend.encode(backend.decode([i], skip_special_tokens=False),
                              add_special_tokens=False).ids == [i] for i in sample)
    if kept < MIN_ROUND_TRIP * len(sample):
        raise ValueError(
            f"transformers {transformers.__version__} builds {path.name}'s tokenizer wrongly: "
            f"only {kept} of {len(sample)} of its own word pieces encode back to themselves. "
            "Upgrade it: pip install -U 'transformers>=5.18'")


def _set_post_processor(backend: Any, bos: str | None, eos: str | None) -> None:
    from tokenizers.processors import TemplateProcessing

    if bos is None and eos is None:
        backend.post_processor = None
        return
    single = " ".join(x for x in (bos, "$A", eos) if x)
    pair = " ".join(x for x in (bos, "$A", eos, bos, "$B:1", eos) if x)
    specials = [(t, backend.token_to_id(t)) for t in {bos, eos} if t]
    backend.post_processor = TemplateProcessing(single=single, pair=pair,
                                                special_tokens=specials)


def _save_atomically(backend: Any, target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        os.close(fd)
        backend.save(tmp)
        os.replace(tmp, target)
    except OSError as e:  # a read-only home: no cache, still works
        log.warning("could not cache the converted tokenizer at %s: %s", target, e)


def _extra_eos(backend: Any, arch: str | None) -> set[int]:
    """Stop tokens a model's generation config adds (Gemma chat ends turns with
    <end_of_turn>)."""
    if arch in _GEMMA_ARCHES:
        token_id = backend.token_to_id("<end_of_turn>")
        return {token_id} if token_id is not None else set()
    return set()


def _from_hf_folder(folder: Path) -> Tokenizer:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{folder}: only fast (tokenizer.json) tokenizers are supported")
    arch = None
    config_path = folder / "config.json"
    if config_path.exists():
        arch = json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
    template = tok.chat_template
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()), None)
    eos = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    gen_path = folder / "generation_config.json"
    if gen_path.exists():
        gen_eos = json.loads(gen_path.read_text(encoding="utf-8")).get("eos_token_id")
        eos |= set(gen_eos) if isinstance(gen_eos, list) else ({gen_eos} if gen_eos is not None
                                                                 else set())
    special = {name: getattr(tok, name, None)
               for name in ("bos_token", "eos_token", "unk_token", "pad_token")}
    add_bos = bool(getattr(tok, "add_bos_token", False))
    if not add_bos and tok.bos_token_id is not None:
        add_bos = tok.bos_token_id in backend.encode("a", add_special_tokens=True).ids
    return Tokenizer(backend, bos_token_id=tok.bos_token_id, eos_token_ids=eos |
                     _extra_eos(backend, arch), chat_template=template, special_tokens=special,
                     add_bos=add_bos, add_eos=bool(getattr(tok, "add_eos_token", False)),
                     architecture=arch)
