"""Drive a localserve model directly: a hand-made paged KV pool, metadata, forward context.

The engine's runner does this for real; model tests use this small stand-in so they can
place blocks by hand (shared prefix blocks, chunked prefill, mixed batches).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from localserve.models.arch import ModelArchConfig
from localserve.runner.context import (
    AttentionMetadata,
    AttentionOps,
    ForwardContext,
    ReferenceAttentionOps,
    forward_context,
)


@dataclass
class Chunk:
    """Run `token_ids` of one sequence starting at position `start_pos` (KV of earlier
    positions already in the blocks of `block_table`)."""

    token_ids: Sequence[int]
    start_pos: int
    block_table: Sequence[int]


class PagedDriver:
    def __init__(self, model: nn.Module, arch: ModelArchConfig, num_blocks: int = 64,
                 block_size: int = 4, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", ops: AttentionOps | None = None) -> None:
        self.model = model
        self.block_size = block_size
        self.device = torch.device(device)
        self.ops = ops or ReferenceAttentionOps()
        shape = (num_blocks, block_size, arch.num_kv_heads, arch.head_dim)
        # NaN-filled: reading a slot nobody wrote poisons the output instead of passing.
        self.kv_caches = [(torch.full(shape, float("nan"), dtype=dtype, device=self.device),
                           torch.full(shape, float("nan"), dtype=dtype, device=self.device))
                          for _ in range(arch.num_layers)]
        self.num_blocks = num_blocks
        self._next = 0

    def alloc(self, num_tokens: int) -> list[int]:
        """Fresh block ids for `num_tokens` tokens."""
        n = -(-num_tokens // self.block_size)
        if self._next + n > self.num_blocks:
            raise RuntimeError("PagedDriver ran out of blocks")
        ids = list(range(self._next, self._next + n))
        self._next += n
        return ids

    def pack(self, chunks: Sequence[Chunk]) -> tuple[torch.Tensor, torch.Tensor,
                                                     AttentionMetadata]:
        """One packed step's token ids, positions and attention metadata, as the runner
        makes them."""
        bs = self.block_size
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        starts, seq_lens = [0], []
        width = max(len(c.block_table) for c in chunks)
        for c in chunks:
            pos = range(c.start_pos, c.start_pos + len(c.token_ids))
            ids.extend(c.token_ids)
            positions.extend(pos)
            slots.extend(c.block_table[p // bs] * bs + p % bs for p in pos)
            starts.append(starts[-1] + len(c.token_ids))
            seq_lens.append(c.start_pos + len(c.token_ids))
        tables = [list(c.block_table) + [0] * (width - len(c.block_table)) for c in chunks]
        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            block_tables=torch.tensor(tables, dtype=torch.int32, device=dev),
            query_start_loc=torch.tensor(starts, dtype=torch.int32, device=dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            max_query_len=max(len(c.token_ids) for c in chunks), max_seq_len=max(seq_lens))
        return (torch.tensor(ids, dtype=torch.int64, device=dev),
                torch.tensor(positions, dtype=torch.int64, device=dev), meta)

    @torch.inference_mode()
    def hidden(self, chunks: Sequence[Chunk]) -> torch.Tensor:
        """One packed forward; the final hidden states of every token [T, hidden]."""
        ids, positions, meta = self.pack(chunks)
        with forward_context(ForwardContext(meta, self.kv_caches, self.ops)):
            return self.model(ids, positions)

    @torch.inference_mode()
    def step(self, chunks: Sequence[Chunk], last_only: bool = False) -> torch.Tensor:
        """Runs one packed forward; returns float32 logits of every token [T, vocab] (or,
        with `last_only`, of each chunk's last token [num_chunks, vocab])."""
        hidden = self.hidden(chunks)
        if last_only:
            ends = itertools.accumulate(len(c.token_ids) for c in chunks)
            hidden = hidden[[end - 1 for end in ends]]
        return self.model.compute_logits(hidden).float()

    def greedy(self, prompt: Sequence[int], num_new: int) -> tuple[list[int], torch.Tensor]:
        """Prefill + `num_new` greedy decode steps of one sequence.

        Returns (generated ids, logits [num_new, vocab] that chose them).
        """
        table = self.alloc(len(prompt) + num_new)
        logits = self.step([Chunk(prompt, 0, table)], last_only=True)
        out, rows = [], [logits[0]]
        for i in range(num_new):
            token = int(rows[-1].argmax())
            out.append(token)
            if i + 1 < num_new:
                rows.append(self.step([Chunk([token], len(prompt) + i, table)])[0])
        return out, torch.stack(rows)
