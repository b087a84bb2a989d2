"""Incremental detokenization: the new text of each step, in O(1) per token.

Decoding all output ids every step costs O(n) per token; instead each step decodes a small
window twice — the tokens already emitted (`prefix`) and the same tokens plus the new ones —
and emits the difference (vLLM's prefix/read offsets). Text is held back while it could still
change: while it ends in U+FFFD (an incomplete UTF-8 character) or, for byte-fallback
vocabularies, while the last token is a <0xNN> byte (a later byte can turn a valid run into
replacement characters). Special tokens are dropped up front when skipped, exactly as the
decoder would drop them, so a window never starts on text it cannot see.

Invariant: the concatenation of every `add` and the final `flush` equals
`tokenizer.decode(prompt_tail + outputs)` minus `decode(prompt_tail)`; that is
`tokenizer.decode(outputs)` for decoders that do not strip a leading space (Gemma, byte-level
BPE), and keeps the space the model produced for those that do (Llama 2-style SentencePiece).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_CONTEXT = 4  # prompt tokens decoded in front of the first output window
_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_token_ids: Sequence[int],
                 skip_special_tokens: bool = True) -> None:
        self._tok = tokenizer
        self._skip = skip_special_tokens
        # Duck-typed: any object with decode(); the two hooks below are optional.
        self._special: frozenset[int] = (frozenset(getattr(tokenizer, "all_special_ids", ()))
                                         if skip_special_tokens else frozenset())
        self._is_byte = getattr(tokenizer, "is_byte_token", None) or (lambda _: False)
        self._ids: list[int] = self._context(prompt_token_ids)
        self._prefix = 0  # start of the decode window
        self._read = len(self._ids)  # tokens up to here have been emitted

    def _context(self, prompt_token_ids: Sequence[int]) -> list[int]:
        """The last prompt tokens, if they decode cleanly (else start the output fresh)."""
        tail = [t for t in list(prompt_token_ids[-4 * _CONTEXT:]) if t not in self._special]
        tail = tail[-_CONTEXT:]
        if not tail or self._is_byte(tail[-1]):
            return []
        if self._decode(tail).endswith(_REPLACEMENT):
            return []
        return tail

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=self._skip)

    def add(self, token_ids: Sequence[int]) -> str:
        """Appends sampled tokens; returns the text that is now final (possibly '')."""
        self._ids.extend(t for t in token_ids if t not in self._special)
        return self._emit(final=False)

    def flush(self) -> str:
        """Everything still held back (at the end of a sequence)."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        if len(self._ids) == self._read:
            return ""
        if not final and self._is_byte(self._ids[-1]):
            return ""
        prefix_text = self._decode(self._ids[self._prefix:self._read])
        full = self._decode(self._ids[self._prefix:])
        if not final and full.endswith(_REPLACEMENT):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        if self._prefix > 1024:  # keep only the window: memory stays O(1) as well
            del self._ids[:self._prefix]
            self._read -= self._prefix
            self._prefix = 0
        return full[len(prefix_text):]
