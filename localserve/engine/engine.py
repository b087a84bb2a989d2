"""LLMEngine: the synchronous step loop that ties scheduler, block manager and runner together.

step(): schedule -> runner.execute -> mark tokens computed -> append samples (forking n>1
parents) -> detokenize and check stops -> free finished sequences -> return output deltas.

Async scheduling (runners with `capabilities.overlap`, i.e. GPUs): step() launches step N
and, while the device computes it, processes the result of step N-1 and returns its outputs.
Step N's sampled tokens enter the token lists as PLACEHOLDERs until their result arrives; the
runner feeds step N+1 the real values from device memory. Requests whose sampling reads their
own history on the host (penalties) or that fork (n > 1) make the engine drain and step
synchronously while they live.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from localserve.config import DEFAULT_MAX_NUM_BATCHED_TOKENS, DEFAULT_MAX_NUM_SEQS, EngineConfig
from localserve.detokenizer import IncrementalDetokenizer
from localserve.engine.block_manager import BlockManager
from localserve.engine.errors import PromptTooLongError, QueueFullError
from localserve.engine.outputs import EngineStats, RequestMetrics, RequestOutput, RequestStats
from localserve.engine.request import ChoiceState, RequestState
from localserve.engine.scheduler import Scheduler
from localserve.engine.sequence import SeqStatus, Sequence
from localserve.interfaces import (
    PLACEHOLDER,
    ModelRunner,
    OverlappingRunner,
    PendingStep,
    SchedulerOutput,
    StepOutput,
)
from localserve.sampling_params import SamplingParams

# The step loop allocates thousands of short-lived containers a second, nearly all freed by
# reference counting, so Python's default gen-0 threshold (700) runs the cyclic collector over
# and over for little. At this one the host's step at 500 sequences took 11% less time
# (`benchmarks/host_loop.py --seqs 500 --rounds 3 [--gc-threshold 700]`: 3.63/3.66 vs
# 4.08/4.12 ms). Host time: the CPU backend's, or a GPU step's that the host would stall.
GC_GEN0_THRESHOLD = 50_000

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineInfo:
    model_name: str
    backend: str
    device: str


class LLMEngine:
    """Single-threaded engine. Not thread-safe: AsyncLLMEngine drives it from one thread."""

    def __init__(self, config: EngineConfig, runner: ModelRunner, tokenizer, info: EngineInfo):
        config = config.with_batch_limits(DEFAULT_MAX_NUM_SEQS, DEFAULT_MAX_NUM_BATCHED_TOKENS)
        self.config = config
        self.runner = runner
        self.tokenizer = tokenizer
        self.info = info
        num_blocks, self.max_model_len = _size_pool(config, runner)
        runner.init_kv_cache(num_blocks)
        runner.set_eos_token_ids(tokenizer.eos_token_ids)
        self.block_manager = BlockManager(num_blocks, config.cache.block_size,
                                          config.cache.enable_prefix_caching)
        self.scheduler = Scheduler(config.scheduler, self.block_manager, runner.capabilities)
        self.requests: dict[str, RequestState] = {}
        self._seqs: dict[int, Sequence] = {}
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.start_time = time.monotonic()
        self._overlap = config.scheduler.async_scheduling and runner.capabilities.overlap
        self._pending: tuple[SchedulerOutput, PendingStep] | None = None
        self._num_sync_requests = 0  # live requests that force synchronous steps
        # The model, tokenizer and caches live for the whole run: move them out of the
        # cyclic GC's generations so its collections stop re-scanning them every few steps.
        gc.collect()
        gc.freeze()
        self._gc_threshold = gc.get_threshold()
        if self._gc_threshold[0]:  # 0: the process turned automatic collection off; keep it so
            gc.set_threshold(max(GC_GEN0_THRESHOLD, self._gc_threshold[0]),
                             *self._gc_threshold[1:])
        log.info("KV pool: %d blocks x %d tokens = %d tokens; max_model_len %d", num_blocks,
                 config.cache.block_size, num_blocks * config.cache.block_size, self.max_model_len)

    @classmethod
    def from_config(cls, config: EngineConfig,
                    on_progress: Callable[[str, float], None] | None = None) -> LLMEngine:
        from localserve.engine.factory import build_engine_parts

        runner, tokenizer, info, config = build_engine_parts(config, on_progress)
        return cls(config, runner, tokenizer, info)

    # -- requests --------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                    priority: int = 0, arrival_time: float | None = None) -> None:
        """Queues a request. Raises ValueError (or PromptTooLongError) for bad input and
        QueueFullError when the waiting queue is at its bound."""
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        self.validate(prompt_token_ids, params)
        if len(self.scheduler.waiting) >= self.config.scheduler.max_waiting:
            raise QueueFullError(f"{len(self.scheduler.waiting)} requests are waiting already")
        now = time.monotonic() if arrival_time is None else arrival_time
        state = RequestState(request_id, list(prompt_token_ids), params, priority,
                             RequestMetrics(now, num_prompt_tokens=len(prompt_token_ids)),
                             self.tokenizer.eos_token_ids, self.max_model_len)
        self.requests[request_id] = state
        self._num_sync_requests += _needs_sync(params)
        seq = Sequence(request_id, state.prompt_token_ids, params, priority, now,
                       num_pending_forks=params.n - 1)
        self._track(state, seq)
        self.scheduler.add(seq)

    def validate(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        if not prompt_token_ids:
            raise ValueError("the prompt must contain at least one token")
        vocab = self.runner.spec.vocab_size
        bad = [t for t in prompt_token_ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt token ids must be in [0, {vocab}), got {bad[:5]}")
        need = len(prompt_token_ids) + (params.max_tokens or 1)
        if need > self.max_model_len:
            raise PromptTooLongError(
                f"this model's maximum context length is {self.max_model_len} tokens; the "
                f"prompt has {len(prompt_token_ids)} tokens and max_tokens asks for "
                f"{params.max_tokens or 1} more ({need} in all)")

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stops a request now: its blocks are free before the next step."""
        state = self.requests.pop(request_id, None)
        if state is None:
            return None
        self._num_sync_requests -= _needs_sync(state.params)
        for seq in [s for s in self._seqs.values() if s.request_id == request_id]:
            self.scheduler.finish(seq)
            del self._seqs[seq.seq_id]
        state.abort()
        state.metrics.finished_time = time.monotonic()
        return RequestOutput(request_id, state.prompt_token_ids, state.take_deltas(), True,
                             state.metrics)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    # -- the step --------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        overlap = self._overlap and not self._num_sync_requests
        if self._pending is not None and not overlap:
            return self._complete_pending()  # drain before a synchronous step
        scheduled = self.scheduler.schedule()
        if not scheduled.seqs:
            return self._complete_pending()
        now = time.monotonic()
        for item in scheduled.seqs:
            metrics = self.requests[self._seqs[item.seq_id].request_id].metrics
            if metrics.first_scheduled_time is None:
                metrics.first_scheduled_time = now
        if not overlap:
            step_output = self.runner.execute(scheduled)
            self.scheduler.update(scheduled)
            return self._process(scheduled, step_output)
        launched = cast(OverlappingRunner, self.runner).launch(scheduled)
        # While the device runs this step: finish the previous one (its tokens replace their
        # placeholders before update() hashes full blocks), then mark this one computed.
        outputs = self._complete_pending()
        self.scheduler.update(scheduled)
        for item in scheduled.seqs:
            if item.choice_indices and (seq := self._seqs.get(item.seq_id)) is not None:
                seq.output_token_ids.append(PLACEHOLDER)
        self._pending = (scheduled, launched)
        return outputs

    def _complete_pending(self) -> list[RequestOutput]:
        if self._pending is None:
            return []
        scheduled, launched = self._pending
        self._pending = None
        return self._process(scheduled, launched.result(), in_flight=True)

    def _process(self, scheduled: SchedulerOutput, step_output: StepOutput,
                 in_flight: bool = False) -> list[RequestOutput]:
        """in_flight: the step's tokens are already in the lists as placeholders."""
        now = time.monotonic()
        touched: dict[str, RequestState] = {}
        ended: set[str] = set()  # requests with a choice that ended in this step
        for item in scheduled.seqs:
            seq = self._seqs.get(item.seq_id)
            samples = step_output.samples.get(item.seq_id)
            if seq is None or not samples:
                continue
            state = self.requests[seq.request_id]
            touched[state.request_id] = state
            if state.metrics.first_token_time is None:
                state.metrics.first_token_time = now
            if seq.num_pending_forks:
                for choice_index, sample in enumerate(samples[1:], start=seq.choice_index + 1):
                    child = seq.fork(choice_index, sample.token_id)
                    self.block_manager.fork(seq, child)
                    self.scheduler.add_running(child)
                    self._track(state, child)
                    if self._after_token(state, child, sample):
                        ended.add(state.request_id)
                seq.num_pending_forks = 0
            if in_flight:
                seq.output_token_ids[-1] = samples[0].token_id
            else:
                seq.output_token_ids.append(samples[0].token_id)
            if self._after_token(state, seq, samples[0]):
                ended.add(state.request_id)
        outputs = []
        for state in touched.values():
            finished = state.request_id in ended and state.finished
            if finished:
                state.metrics.finished_time = now
                del self.requests[state.request_id]
                self._num_sync_requests -= _needs_sync(state.params)
            outputs.append(RequestOutput(state.request_id, state.prompt_token_ids,
                                         state.take_deltas(), finished, state.metrics))
        return outputs

    def _after_token(self, state: RequestState, seq: Sequence, sample) -> bool:
        """Records the token; True when it ended its choice."""
        self.generation_tokens_total += 1
        state.metrics.num_generation_tokens += 1
        choice = state.choices[seq.choice_index]
        if state.add_token(choice, sample, seq.num_outputs, seq.num_tokens):
            self.scheduler.finish(seq)
            del self._seqs[seq.seq_id]
            return True
        return False

    def _track(self, state: RequestState, seq: Sequence) -> None:
        self._seqs[seq.seq_id] = seq
        if seq.choice_index == 0 and not seq.output_token_ids:
            self.prompt_tokens_total += len(state.prompt_token_ids)
        detok = IncrementalDetokenizer(self.tokenizer, state.prompt_token_ids,
                                       state.params.skip_special_tokens)
        state.choices[seq.choice_index] = ChoiceState(seq.choice_index, detok)

    # -- introspection ---------------------------------------------------------------------
    def live_sequences(self) -> list[Sequence]:
        return list(self._seqs.values())

    def stats(self) -> EngineStats:
        s = self.scheduler.stats()
        now = time.monotonic()
        rows = []
        for seq in sorted(self._seqs.values(), key=lambda q: q.arrival_time):
            state = ("running" if seq.status is SeqStatus.RUNNING
                     else "preempted" if seq.num_preemptions else "waiting")
            name = seq.request_id if self.requests[seq.request_id].params.n == 1 \
                else f"{seq.request_id}#{seq.choice_index}"
            rows.append(RequestStats(name, state, seq.num_prompt_tokens, seq.num_outputs,
                                     seq.priority, round(now - seq.arrival_time, 3)))
        spec = self.runner.spec
        return EngineStats(
            model=self.info.model_name, backend=self.info.backend, device=self.info.device,
            quantization=spec.quantization, max_model_len=self.max_model_len,
            block_size=self.block_manager.block_size, num_running=s.num_running,
            num_waiting=s.num_waiting, num_preempted_total=s.num_preempted_total,
            kv_blocks_total=s.kv_blocks_total, kv_blocks_used=s.kv_blocks_used,
            prefix_cache_queries=s.prefix_cache_queries, prefix_cache_hits=s.prefix_cache_hits,
            prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.generation_tokens_total,
            uptime_s=round(now - self.start_time, 3), requests=rows)

    def shutdown(self) -> None:
        self._pending = None
        self.runner.shutdown()
        # gc.freeze() at start-up exempted every object of that moment from collection;
        # without this, reference cycles through the runner would keep the model alive.
        gc.unfreeze()
        gc.set_threshold(*self._gc_threshold)
        gc.collect()


def _size_pool(config: EngineConfig, runner: ModelRunner) -> tuple[int, int]:
    """(num_blocks, max_model_len): one sequence of max_model_len must fit the pool alone, so
    that preemption can always make progress; the pool never exceeds what max_num_seqs
    full-length sequences could use."""
    block_size = config.cache.block_size
    model_len = runner.spec.max_position_embeddings
    asked = config.model.max_model_len
    if asked and asked > model_len:
        raise ValueError(f"max_model_len {asked} exceeds the model's context of {model_len} "
                         "tokens")
    num_blocks = config.cache.num_blocks or runner.profile_num_blocks()
    pool_tokens = num_blocks * block_size
    if asked and asked > pool_tokens:
        raise ValueError(f"the KV pool holds {pool_tokens} tokens, less than max_model_len="
                         f"{asked}: lower --max-model-len or free memory")
    max_model_len = min(asked or model_len, pool_tokens)
    cap = -(-max_model_len // block_size) * config.scheduler.max_num_seqs
    return min(num_blocks, cap), max_model_len


def _needs_sync(params: SamplingParams) -> bool:
    """Forks and penalties read sampled tokens on the host before the next step."""
    return params.n > 1 or params.penalized
