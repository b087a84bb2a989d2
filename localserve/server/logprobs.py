"""The engine's TokenSamples in OpenAI's two logprob shapes (completions and chat).

A token is shown as the text it decodes to on its own (special tokens included), like
OpenAI and vLLM do; `bytes` carries its UTF-8 so clients can rebuild split characters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from localserve.interfaces import TokenSample

UNKNOWN_LOGPROB = -9999.0  # OpenAI's value for "no logprob"; ours should always be known


class LogprobFormatter:
    """Per-request helper; caches token texts (top-k alternatives repeat a lot)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._text: dict[int, str] = {}

    def token_text(self, token_id: int) -> str:
        text = self._text.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False)
            self._text[token_id] = text
        return text

    def completion(self, samples: Sequence[TokenSample], text_offset: int) -> tuple[dict, int]:
        """Completions shape for `samples`, starting at `text_offset`; returns (shape, next)."""
        tokens, token_logprobs, top, offsets = [], [], [], []
        for s in samples:
            text = self.token_text(s.token_id)
            tokens.append(text)
            token_logprobs.append(s.logprob)
            top.append({self.token_text(t): lp for t, lp in s.top_logprobs} or None)
            offsets.append(text_offset)
            text_offset += len(text)
        return ({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top,
                 "text_offset": offsets}, text_offset)

    def chat(self, samples: Sequence[TokenSample]) -> list[dict]:
        """Chat shape: the `content` list of `choices[i].logprobs`."""
        return [{**self._entry(s.token_id, s.logprob),
                 "top_logprobs": [self._entry(t, lp) for t, lp in s.top_logprobs]}
                for s in samples]

    def _entry(self, token_id: int, logprob: float | None) -> dict:
        text = self.token_text(token_id)
        return {"token": text, "logprob": UNKNOWN_LOGPROB if logprob is None else logprob,
                "bytes": list(text.encode("utf-8"))}


def merge_completion_logprobs(parts: Sequence[dict]) -> dict | None:
    """Joins per-delta completion logprob shapes into one (for non-streamed responses)."""
    if not parts:
        return None
    merged: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [],
                               "text_offset": []}
    for p in parts:
        for key in merged:
            merged[key].extend(p[key])
    return merged
