"""A deterministic stand-in for `AsyncLLMEngine` (same API) so the server tests need no model.

Tokens are UTF-8 bytes (id = byte + 3; 0 pad, 1 bos, 2 eos). Greedy output is a fixed text
read from an offset that depends only on the prompt, so the same request always gives the
same tokens, alone or in any batch; a seed moves the offset for sampled requests. One token
per `token_delay` seconds per choice. Knobs on the instance inject the engine's failures.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from localserve.engine.errors import EngineDeadError, PromptTooLongError, QueueFullError
from localserve.engine.outputs import (
    CompletionDelta,
    EngineStats,
    RequestMetrics,
    RequestOutput,
    RequestStats,
)
from localserve.interfaces import TokenSample
from localserve.sampling_params import SamplingParams

CORPUS = b"the quick brown fox jumps over the lazy dog. pack my box with five dozen jugs. "
SPECIALS = {0: "<pad>", 1: "<bos>", 2: "<eos>"}


class FakeTokenizer:
    """Byte-level tokenizer with a tiny chat template."""

    eos_token_ids = frozenset({2})
    vocab_size = 259

    def __init__(self, has_chat_template: bool = True) -> None:
        self.has_chat_template = has_chat_template

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return ([1] if add_special_tokens else []) + [b + 3 for b in text.encode("utf-8")]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        out = bytearray()
        for i in ids:
            if i >= 3:
                out.append(i - 3)
            elif not skip_special_tokens:
                out += SPECIALS[i].encode()
        return out.decode("utf-8", errors="replace")

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [SPECIALS.get(i) or f"<0x{i - 3:02X}>" for i in ids]

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            **template_kwargs: object) -> str:
        if not self.has_chat_template:
            raise ValueError("this model has no chat template")
        parts = [f"<kwargs {sorted(template_kwargs.items())}>"] if template_kwargs else []
        for m in messages:
            if m["role"] not in ("system", "user", "assistant", "tool"):
                raise ValueError(f"unknown role {m['role']!r}")
            parts.append(f"<{m['role']}>{m.get('content') or ''}\n")
        if add_generation_prompt:
            parts.append("<assistant>")
        return "".join(parts)


@dataclass
class _Choice:
    index: int
    start: int
    token_ids: list[int] = field(default_factory=list)
    emitted: int = 0  # chars of text already sent
    finish_reason: str | None = None
    stop_reason: str | int | None = None


class FakeEngine:
    """Implements the AsyncLLMEngine surface the server uses, deterministically."""

    def __init__(self, *, model_name: str = "fake-model", max_model_len: int = 256,
                 token_delay: float = 0.0, has_chat_template: bool = True) -> None:
        self.tokenizer = FakeTokenizer(has_chat_template)
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.backend_name = "fake"
        self.device_name = "fake device"
        self.token_delay = token_delay
        # Failure injection.
        self.queue_full = False
        self.fail_with: BaseException | None = None  # raised on first iteration
        self.die_after_tokens: int | None = None  # engine "dies" mid-request
        self.eos_after: int | None = None  # emit EOS after this many tokens
        self.ready = True
        self._errored: BaseException | None = None
        # Observability for tests.
        self.running: dict[str, int] = {}  # request_id -> priority
        self.aborted: list[str] = []
        self.finished: list[str] = []
        self.calls: list[tuple[list[int], SamplingParams, str, int]] = []
        self.num_prompt_tokens = 0
        self.num_generation_tokens = 0
        self._start = time.monotonic()
        self._shutdown = False

    # --- AsyncLLMEngine API ---
    @property
    def is_ready(self) -> bool:
        return self.ready and self._errored is None

    @property
    def errored(self) -> BaseException | None:
        return self._errored

    def die(self, error: BaseException | None = None) -> None:
        self._errored = error or RuntimeError("engine thread crashed (fake)")

    async def generate(self, prompt_token_ids: list[int], params: SamplingParams,
                       request_id: str, priority: int = 0) -> AsyncIterator[RequestOutput]:
        self.calls.append((list(prompt_token_ids), params, request_id, priority))
        if self._errored is not None:
            raise EngineDeadError("engine is dead")
        if self.fail_with is not None:
            raise self.fail_with
        if self.queue_full:
            raise QueueFullError("too many waiting requests")
        max_tokens = params.max_tokens or (self.max_model_len - len(prompt_token_ids))
        if len(prompt_token_ids) + max_tokens > self.max_model_len:
            raise PromptTooLongError(f"prompt ({len(prompt_token_ids)}) + max_tokens "
                                     f"({max_tokens}) > max_model_len ({self.max_model_len})")
        if any(not 0 <= t < self.tokenizer.vocab_size for t in prompt_token_ids):
            raise ValueError("token id out of range")
        metrics = RequestMetrics(arrival_time=time.monotonic(),
                                 num_prompt_tokens=len(prompt_token_ids))
        base = sum(prompt_token_ids)
        if params.temperature > 0:
            base += (params.seed * 7919) if params.seed is not None else random.randrange(1 << 30)
        choices = [_Choice(i, base + (i * 13 if params.temperature > 0 else 0))
                   for i in range(params.n)]
        self.running[request_id] = priority
        self.num_prompt_tokens += len(prompt_token_ids)
        finished = False
        try:
            await asyncio.sleep(0)
            metrics.first_scheduled_time = time.monotonic()
            step = 0
            while not finished:
                if self.token_delay:
                    await asyncio.sleep(self.token_delay)
                if self._errored is not None or self._shutdown:
                    raise EngineDeadError("engine died while generating")
                if request_id not in self.running:  # aborted
                    return
                step += 1
                if self.die_after_tokens is not None and step > self.die_after_tokens:
                    self.die()
                    raise EngineDeadError("engine died while generating")
                deltas = [self._advance(c, params, max_tokens, step) for c in choices
                          if c.finish_reason is None]
                now = time.monotonic()
                metrics.first_token_time = metrics.first_token_time or now
                metrics.num_generation_tokens = sum(len(c.token_ids) for c in choices)
                finished = all(c.finish_reason is not None for c in choices)
                if finished:
                    metrics.finished_time = now
                yield RequestOutput(request_id, list(prompt_token_ids), deltas, finished, metrics)
        finally:
            self.running.pop(request_id, None)
            if finished:
                self.finished.append(request_id)
            elif request_id not in self.aborted:
                self.aborted.append(request_id)  # the caller closed the iterator: abort

    def _advance(self, c: _Choice, params: SamplingParams, max_tokens: int,
                 step: int) -> CompletionDelta:
        if self.eos_after is not None and len(c.token_ids) >= self.eos_after \
                and not params.ignore_eos:
            token = 2
        else:
            token = CORPUS[(c.start + len(c.token_ids)) % len(CORPUS)] + 3
        c.token_ids.append(token)
        self.num_generation_tokens += 1
        text = self.tokenizer.decode(c.token_ids, params.skip_special_tokens)
        if token == 2:
            c.finish_reason = "stop"
        for s in params.stop:
            pos = text.find(s)
            if pos != -1:
                text, c.finish_reason, c.stop_reason = text[:pos], "stop", s
                break
        if c.finish_reason is None and token in params.stop_token_ids:
            c.finish_reason, c.stop_reason = "stop", token
        if c.finish_reason is None and len(c.token_ids) >= max_tokens:
            c.finish_reason = "length"
        # Hold back text that may be the start of a stop string.
        hold = 0 if c.finish_reason else max((len(s) - 1 for s in params.stop), default=0)
        upto = max(c.emitted, len(text) - hold)
        delta_text, c.emitted = text[c.emitted:upto], upto
        logprobs = []
        if params.logprobs is not None:
            k = params.logprobs
            alts = [(token, -0.25)] + [(3 + ((token + j) % 256), -1.0 - j) for j in range(1, k + 1)]
            logprobs = [TokenSample(token, -0.25 - 0.01 * step, tuple(alts[:k]))]
        return CompletionDelta(c.index, delta_text, [token], logprobs, c.finish_reason,
                               c.stop_reason)

    async def abort(self, request_id: str) -> None:
        self.running.pop(request_id, None)
        if request_id not in self.finished and request_id not in self.aborted:
            self.aborted.append(request_id)

    def stats(self) -> EngineStats:
        now = time.monotonic()
        return EngineStats(
            model=self.model_name, backend=self.backend_name, device=self.device_name,
            quantization=None, max_model_len=self.max_model_len, block_size=16,
            num_running=len(self.running), num_waiting=0, num_preempted_total=3,
            kv_blocks_total=100, kv_blocks_used=10 * len(self.running),
            prefix_cache_queries=40, prefix_cache_hits=10,
            prompt_tokens_total=self.num_prompt_tokens,
            generation_tokens_total=self.num_generation_tokens, uptime_s=now - self._start,
            requests=[RequestStats(rid, "running", 1, 1, prio, 0.0)
                      for rid, prio in self.running.items()])

    def shutdown(self) -> None:
        self._shutdown = True
