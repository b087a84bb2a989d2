"""A deterministic stand-in model that exercises the engine's KV bookkeeping for real.

FakeRunner stores token ids in a paged "KV cache" exactly where the slot mapping says and
computes each next-token distribution from what it reads back through the block table. A
wrong block table, a missed copy-on-write or a bad prefix hit changes the tokens, so tests
that compare against a solo run catch bookkeeping bugs without a real model.
"""

from __future__ import annotations

import numpy as np
import torch

from localserve.config import EngineConfig
from localserve.engine.engine import EngineInfo, LLMEngine
from localserve.interfaces import (
    PLACEHOLDER,
    FinishedStep,
    ModelSpec,
    RunnerCapabilities,
    SchedulerOutput,
    StepOutput,
)
from localserve.runner.sampler import Sampler, SampleRequest

VOCAB = 48
EOS = 1


class FakeTokenizer:
    """Token t decodes to a short word; EOS is special. Multi-char words test stop strings."""

    eos_token_ids = frozenset({EOS})
    all_special_ids = frozenset({EOS})
    bos_token_id = None
    vocab_size = VOCAB
    byte_fallback = False

    def is_byte_token(self, token_id: int) -> bool:
        return False

    def piece(self, t: int) -> str:
        return "" if t == EOS else "abcdefghij"[t % 10] + ("" if t % 3 else " ")

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(self.piece(t) for t in ids)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [2 + (ord(c) % (VOCAB - 2)) for c in text]

    def convert_ids_to_tokens(self, ids):
        return [self.piece(t) for t in ids]

    def apply_chat_template(self, messages, add_generation_prompt: bool = True) -> str:
        return "".join(m["content"] for m in messages)


class FakeRunner:
    capabilities = RunnerCapabilities(mixed_batches=True)

    def __init__(self, block_size: int, max_len: int = 4096, mixed_batches: bool = True,
                 overlap: bool = False):
        self.block_size = block_size
        self.spec = ModelSpec("fake", 1, 1, 1, VOCAB, max_len, "float32")
        self.capabilities = RunnerCapabilities(mixed_batches=mixed_batches, overlap=overlap)
        self.last_drawn: dict[int, int] = {}
        self.sampler = Sampler(VOCAB, frozenset({EOS}))
        self.steps: list[SchedulerOutput] = []

    def load_model(self) -> None:
        pass

    def set_eos_token_ids(self, eos_token_ids: frozenset[int]) -> None:
        self.sampler = Sampler(VOCAB, eos_token_ids)

    def profile_num_blocks(self) -> int:
        return 256

    def init_kv_cache(self, num_blocks: int) -> None:
        self.kv = np.full((num_blocks, self.block_size), -1, dtype=np.int64)

    def execute(self, scheduled: SchedulerOutput) -> StepOutput:
        return self.launch(scheduled).result()

    def launch(self, scheduled: SchedulerOutput) -> FinishedStep:
        """Runs at once; a PLACEHOLDER input is read from the draws of the step before, as
        a GPU runner reads it from device memory (only with async scheduling)."""
        self.steps.append(scheduled)
        if not self.capabilities.mixed_batches:
            kinds = {s.num_tokens == 1 for s in scheduled.seqs}
            assert len(kinds) == 1, "mixed single-token and multi-token items in one step"
        for src, dst in scheduled.blocks_to_copy:
            self.kv[dst] = self.kv[src]
        bs = self.block_size
        rows, requests, owners = [], [], []
        for s in scheduled.seqs:
            tokens = list(s.token_ids)
            if PLACEHOLDER in tokens:
                assert self.capabilities.overlap and tokens.index(PLACEHOLDER) == len(tokens) - 1
                tokens[-1] = self.last_drawn[s.seq_id]
            for i, t in enumerate(tokens):
                pos = s.start_pos + i
                self.kv[s.block_table[pos // bs], pos % bs] = t
            if not s.choice_indices:
                continue
            end = s.start_pos + s.num_tokens
            context = [int(self.kv[s.block_table[p // bs], p % bs]) for p in range(end)]
            known = [*s.prompt_token_ids, *s.output_token_ids]
            assert PLACEHOLDER not in known[:-1], "a placeholder outlived its step"
            if known[-1] == PLACEHOLDER:
                known[-1] = self.last_drawn[s.seq_id]
            assert context == known, "KV cache corrupted"
            logits = self.logits(context)
            for c in s.choice_indices:
                rows.append(logits)
                owners.append(s.seq_id)
                requests.append(SampleRequest(s.params, s.prompt_token_ids, s.output_token_ids, c))
        out: dict[int, list] = {}
        if rows:
            for seq_id, sample in zip(owners, self.sampler(torch.stack(rows), requests),
                                      strict=True):
                out.setdefault(seq_id, []).append(sample)
        self.last_drawn = {seq_id: samples[0].token_id for seq_id, samples in out.items()}
        return FinishedStep(StepOutput(out))

    @staticmethod
    def logits(context: list[int]) -> torch.Tensor:
        h = 0
        for t in context[-4:]:
            h = (h * 1_000_003 + t + 7) % (2**31)
        h = (h * 31 + len(context)) % (2**31)
        v = torch.arange(VOCAB, dtype=torch.float64)
        return (((h * 2654435761 + v * 40503 + (v * h) % 97) % 1000) / 150.0).float()

    def shutdown(self) -> None:
        pass


def fake_engine(num_blocks: int = 64, block_size: int = 4, max_num_seqs: int = 8,
                max_num_batched_tokens: int = 32, policy: str = "fcfs", max_len: int = 4096,
                mixed_batches: bool = True, prefix_caching: bool = True,
                max_waiting: int = 1024, overlap: bool = False) -> LLMEngine:
    from localserve.config import engine_config

    config: EngineConfig = engine_config(
        block_size=block_size, num_kv_blocks=num_blocks, max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens, scheduling_policy=policy,
        enable_prefix_caching=prefix_caching, max_waiting=max_waiting)
    runner = FakeRunner(block_size, max_len, mixed_batches, overlap)
    return LLMEngine(config, runner, FakeTokenizer(), EngineInfo("fake", "fake", "cpu"))
