"""Continuous batching: which tokens of which sequences run in the next step.

One token budget per step and no prefill/decode phases: each sequence asks for the tokens it
has not computed yet (its whole remaining prompt, or one new token), capped by the budget, so
chunked prefill falls out of the same rule. Running sequences go first; waiting ones are
admitted while budget, `max_num_seqs` and free blocks allow. When blocks run out, the
lowest-priority, latest-arriving running sequence is preempted (its blocks freed; it is
recomputed later, cheaply when its blocks are still in the prefix cache).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from localserve.config import SchedulerConfig
from localserve.engine.block_manager import BlockManager
from localserve.engine.sequence import SeqStatus, Sequence
from localserve.interfaces import RunnerCapabilities, ScheduledSeq, SchedulerOutput


@dataclass(frozen=True)
class SchedulerStats:
    num_running: int
    num_waiting: int
    num_preempted_total: int
    kv_blocks_total: int
    kv_blocks_used: int
    prefix_cache_queries: int
    prefix_cache_hits: int


class Scheduler:
    """Owns the waiting and running queues; the BlockManager owns the blocks."""

    def __init__(self, config: SchedulerConfig, block_manager: BlockManager,
                 capabilities: RunnerCapabilities | None = None):
        self.config = config
        self.block_manager = block_manager
        self.mixed_batches = (capabilities or RunnerCapabilities()).mixed_batches
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self.num_preempted_total = 0
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0

    # -- queue changes ---------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        seq.status = SeqStatus.WAITING
        self.waiting.append(seq)

    def add_running(self, seq: Sequence) -> None:
        """A fork whose blocks the block manager already shares with its parent."""
        seq.status = SeqStatus.RUNNING
        self.running.append(seq)

    def finish(self, seq: Sequence) -> None:
        """Frees a finished (or aborted) sequence's blocks now."""
        if seq.status is SeqStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SeqStatus.WAITING:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
        seq.status = SeqStatus.FINISHED

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # -- one step --------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        if self.mixed_batches:
            return self._schedule(single=None)
        # A runner that cannot mix gets multi-token steps first, else single-token steps.
        out = self._schedule(single=False)
        return out if out.seqs else self._schedule(single=True)

    def _schedule(self, single: bool | None) -> SchedulerOutput:
        """single: None = any mix; True/False = only items of one token / of several."""
        budget = self.config.max_num_batched_tokens
        chosen: list[tuple[Sequence, int]] = []
        copies: list[tuple[int, int]] = []

        order = deque(sorted(self.running, key=Sequence.sort_key))
        preempted_now = False
        while order and budget > 0:
            seq = order.popleft()
            if seq.params.max_tokens is not None and seq.num_outputs >= seq.params.max_tokens:
                continue  # its last token is still in flight (async scheduling) and ends it
            num_new = min(seq.num_tokens - seq.num_computed, budget)
            if single is not None and (num_new == 1) != single:
                continue
            while (cow := self.block_manager.append_slots(seq, num_new)) is None:
                victim = order.pop() if order else seq  # lowest priority, latest arrival
                self._preempt(victim)
                preempted_now = True
                if victim is seq:
                    break
            if seq.status is not SeqStatus.RUNNING:
                continue
            copies.extend(cow)
            chosen.append((seq, num_new))
            budget -= num_new

        # No admissions in a step that had to preempt: the pool is under pressure.
        if not preempted_now:
            self.waiting.sort(key=Sequence.sort_key)
            while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
                seq = self.waiting[0]
                first_time = seq.num_preemptions == 0
                num_new = self.block_manager.allocate(seq, budget)
                if num_new is None:
                    break  # keep the order: nobody overtakes the head of the queue
                if single is not None and (num_new == 1) != single:
                    self.block_manager.free(seq)
                    seq.num_computed = 0
                    break
                if first_time:
                    self.prefix_cache_queries += seq.num_prompt_tokens
                    self.prefix_cache_hits += seq.num_computed
                    seq.num_cached_tokens = seq.num_computed
                self.waiting.pop(0)
                seq.status = SeqStatus.RUNNING
                self.running.append(seq)
                chosen.append((seq, num_new))
                budget -= num_new

        return SchedulerOutput(
            seqs=[self._scheduled(seq, n) for seq, n in chosen], blocks_to_copy=copies)

    def update(self, scheduled: SchedulerOutput) -> None:
        """Marks the scheduled tokens as computed and caches the blocks they filled."""
        by_id = {s.seq_id: s for s in self.running}
        for item in scheduled.seqs:
            seq = by_id.get(item.seq_id)
            if seq is None:  # aborted while the step ran
                continue
            seq.num_computed += item.num_tokens
            self.block_manager.commit(seq)

    # -- helpers ---------------------------------------------------------------------------
    def _scheduled(self, seq: Sequence, num_new: int) -> ScheduledSeq:
        end = seq.num_computed + num_new
        samples = end == seq.num_tokens  # the last known token runs: its logits give the next
        if not samples:
            choices: tuple[int, ...] = ()
        elif seq.num_pending_forks:
            choices = tuple(range(seq.choice_index, seq.choice_index + 1 + seq.num_pending_forks))
        else:
            choices = (seq.choice_index,)
        # The lists are handed over, not copied (O(1) per sequence): they stay unchanged
        # until the next schedule(), and the runner reads them only within execute().
        return ScheduledSeq(
            seq_id=seq.seq_id, token_ids=seq.token_ids(seq.num_computed, end),
            start_pos=seq.num_computed, block_table=seq.block_table,
            choice_indices=choices, params=seq.params,
            prompt_token_ids=seq.prompt_token_ids, output_token_ids=seq.output_token_ids)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.num_computed = 0
        seq.num_preemptions += 1
        seq.status = SeqStatus.WAITING
        self.waiting.append(seq)
        self.num_preempted_total += 1

    def stats(self) -> SchedulerStats:
        bm = self.block_manager
        return SchedulerStats(len(self.running), len(self.waiting), self.num_preempted_total,
                              bm.num_blocks, bm.num_used_blocks, self.prefix_cache_queries,
                              self.prefix_cache_hits)
