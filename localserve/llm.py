"""The offline API: `LLM().generate(prompts, params)` and `LLM().chat(messages, params)`."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from localserve.config import EngineConfig, engine_config
from localserve.engine.engine import LLMEngine
from localserve.engine.outputs import RequestMetrics
from localserve.interfaces import TokenSample
from localserve.sampling_params import SamplingParams

Prompt = str | list[int]
Messages = list[dict]


@dataclass
class Completion:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenSample] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None


@dataclass
class GenerationOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[Completion]
    metrics: RequestMetrics | None = None


class LLM:
    """Loads a model (the default model when `model` is None) and generates in batches.

    Keyword arguments are engine options with vLLM's names (max_model_len, max_num_seqs,
    max_num_batched_tokens, block_size, num_kv_blocks, enable_prefix_caching, backend, dtype,
    load_format, seed, scheduling_policy, ...).
    """

    def __init__(self, model: str | None = None, *, config: EngineConfig | None = None,
                 **options: object):
        if config is None:
            config = engine_config(model=model, **options)
        elif model is not None or options:
            raise TypeError("pass either config= or model/options, not both")
        self.engine = LLMEngine.from_config(config)
        self.tokenizer = self.engine.tokenizer
        self._ids = itertools.count()

    def generate(self, prompts: Prompt | Sequence[Prompt],
                 params: SamplingParams | Sequence[SamplingParams] | None = None,
                 priorities: Sequence[int] | None = None) -> list[GenerationOutput]:
        """Runs all prompts to completion in continuous batches; results in input order."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        prompts = list(prompts)  # type: ignore[arg-type]
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"got {len(params)} SamplingParams for {len(prompts)} prompts")
        results: dict[str, GenerationOutput] = {}
        order = []
        for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
            ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
            request_id = str(next(self._ids))
            self.engine.add_request(request_id, ids, p, priorities[i] if priorities else 0)
            results[request_id] = GenerationOutput(
                request_id, prompt if isinstance(prompt, str) else None, ids,
                [Completion(k) for k in range(p.n)])
            order.append(request_id)
        try:
            while self.engine.has_unfinished_requests():
                for out in self.engine.step():
                    result = results[out.request_id]
                    result.metrics = out.metrics
                    for delta in out.outputs:
                        c = result.outputs[delta.index]
                        c.text += delta.text
                        c.token_ids += delta.token_ids
                        c.logprobs += delta.logprobs
                        c.finish_reason = delta.finish_reason or c.finish_reason
                        c.stop_reason = delta.stop_reason if delta.finish_reason else c.stop_reason
        except BaseException:
            for request_id in order:
                self.engine.abort(request_id)
            raise
        return [results[r] for r in order]

    def shutdown(self) -> None:
        """Frees the model, the KV pool and (on a GPU) their device memory now."""
        self.engine.shutdown()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def chat(self, messages: Messages | Sequence[Messages],
             params: SamplingParams | Sequence[SamplingParams] | None = None
             ) -> list[GenerationOutput]:
        """Applies the model's chat template (Gemma's turn format for the default model)."""
        if messages and isinstance(messages[0], dict):
            messages = [messages]  # type: ignore[list-item]
        prompts = [self.tokenizer.encode(self.tokenizer.apply_chat_template(list(m)),
                                         add_special_tokens=False) for m in messages]
        return self.generate(prompts, params)
