"""A sequence: one choice of one request, as the scheduler and block manager see it."""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field

from localserve.sampling_params import SamplingParams

_seq_ids = itertools.count()


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """Token ids (prompt + output) and how many of them have KV in the cache.

    `num_computed` catches up with `num_tokens` step by step; there are no prefill/decode
    phases. After preemption by recompute, the blocks are gone and `num_computed` is 0: the
    prompt and the outputs so far are simply computed again (prefix hits make it cheap).
    """

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    priority: int = 0
    arrival_time: float = field(default_factory=time.monotonic)
    choice_index: int = 0
    # Samples still to draw as siblings when the prompt completes (n>1 parents only).
    num_pending_forks: int = 0
    seq_id: int = field(default_factory=lambda: next(_seq_ids))
    output_token_ids: list[int] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    num_computed: int = 0
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache at first admission
    num_preemptions: int = 0
    status: SeqStatus = SeqStatus.WAITING

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_outputs(self) -> int:
        return len(self.output_token_ids)

    def token_ids(self, start: int = 0, stop: int | None = None) -> list[int]:
        """Token ids [start, stop) across prompt and outputs."""
        stop = self.num_tokens if stop is None else stop
        p = len(self.prompt_token_ids)
        if stop <= p:
            return self.prompt_token_ids[start:stop]
        if start >= p:
            return self.output_token_ids[start - p:stop - p]
        return self.prompt_token_ids[start:] + self.output_token_ids[:stop - p]

    def sort_key(self) -> tuple[int, float, int]:
        """Lower runs first: priority (lower value = more urgent), then arrival."""
        return (self.priority, self.arrival_time, self.seq_id)

    def fork(self, choice_index: int, first_token: int) -> Sequence:
        """A sibling sharing the same prompt (and, via the block manager, its blocks)."""
        child = Sequence(self.request_id, self.prompt_token_ids, self.params, self.priority,
                         self.arrival_time, choice_index)
        child.output_token_ids = [*self.output_token_ids, first_token]
        child.num_computed = self.num_computed
        child.num_cached_tokens = self.num_cached_tokens
        child.status = self.status
        return child
