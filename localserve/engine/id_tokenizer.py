"""A stand-in tokenizer for models that ship none (dummy weights from a bare config.json).

Benchmarks on real shapes with random weights send token ids and read token ids back; they
need no text. Decoding yields empty text, so the engine's detokenizing costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence


class IdTokenizer:
    bos_token_id: int | None = None
    byte_fallback = False
    all_special_ids: frozenset[int] = frozenset()
    chat_template = None

    def __init__(self, vocab_size: int, eos_token_ids: frozenset[int]):
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        raise ValueError("this model has no tokenizer (dummy weights): send token ids")

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return ""

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str | None]:
        return [None for _ in ids]

    def is_byte_token(self, token_id: int) -> bool:
        return False

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True
                            ) -> str:
        raise ValueError("this model has no tokenizer (dummy weights): no chat template")
