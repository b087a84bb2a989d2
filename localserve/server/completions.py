"""POST /v1/completions: prompts (text or token ids, one or many) in, text completions out.

A request with P prompts and n choices runs P engine requests; choice `p * n + i` is choice i
of prompt p (OpenAI's and vLLM's numbering). Streams interleave choices as tokens arrive.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from localserve.engine.outputs import CompletionDelta
from localserve.server.errors import APIError, invalid_value
from localserve.server.generation import (
    EngineStream,
    check_token_ids,
    close_all,
    fit_max_tokens,
    merge,
    start_all,
    until_disconnect,
    usage,
)
from localserve.server.logprobs import LogprobFormatter, merge_completion_logprobs
from localserve.server.protocol import CompletionRequest, json_body
from localserve.server.sse import SSE_DONE, EventStreamResponse, sse_data, stream_error_event
from localserve.server.state import ServerState, get_state, parse_body

router = APIRouter()


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    num_tokens: int = 0
    logprobs: list[dict] = field(default_factory=list)
    text_offset: int = 0
    finish_reason: str | None = None
    stop_reason: str | int | None = None


@router.post("/v1/completions", openapi_extra=json_body(CompletionRequest))
async def create_completion(request: Request) -> Response:
    state = get_state(request)
    req = await parse_body(request, CompletionRequest)
    state.check_model(req.model)
    if (bad := req.unsupported()) is not None:
        raise APIError(400, bad[1], param=bad[0], code="unsupported")
    state.check_engine()
    engine = state.engine
    try:
        prompts = req.prompts()
    except ValueError as e:
        raise APIError(400, str(e), param="prompt", code="invalid_value") from None
    prompt_ids: list[list[int]] = []
    for p in prompts:
        ids = engine.tokenizer.encode(p, add_special_tokens=True) if isinstance(p, str) else p
        check_token_ids(ids, engine.tokenizer.vocab_size)
        prompt_ids.append(ids)
    request_id = f"cmpl-{uuid.uuid4().hex}"
    streams = []
    for i, ids in enumerate(prompt_ids):
        max_tokens = fit_max_tokens(len(ids), req.max_tokens, engine.max_model_len,
                                    prompt_param="prompt")
        try:
            params = req.sampling_params(max_tokens=max_tokens, logprobs=req.logprobs)
        except ValueError as e:
            raise invalid_value(e) from None
        streams.append(EngineStream(engine, state.metrics, ids, params,
                                    f"{request_id}-{i}" if len(prompt_ids) > 1 else request_id,
                                    req.priority))
    await until_disconnect(start_all(streams), request.receive)
    echoes = [_echo_text(engine, p, ids) if req.echo else ""
              for p, ids in zip(prompts, prompt_ids, strict=True)]
    if req.stream:
        return EventStreamResponse(_stream(state, req, request_id, streams, echoes))
    body = await until_disconnect(_collect(state, req, request_id, streams, echoes),
                                  request.receive)
    return JSONResponse(body)


def _echo_text(engine: object, prompt: str | list[int], ids: list[int]) -> str:
    if isinstance(prompt, str):
        return prompt
    return engine.tokenizer.decode(ids, skip_special_tokens=True)  # type: ignore[attr-defined]


def _add(c: _Choice, d: CompletionDelta, fmt: LogprobFormatter | None) -> None:
    c.text.append(d.text)
    c.num_tokens += len(d.token_ids)
    if fmt is not None and d.logprobs:
        shape, c.text_offset = fmt.completion(d.logprobs, c.text_offset)
        c.logprobs.append(shape)
    if d.finish_reason is not None:
        c.finish_reason, c.stop_reason = d.finish_reason, d.stop_reason


async def _collect(state: ServerState, req: CompletionRequest, request_id: str,
                   streams: list[EngineStream], echoes: list[str]) -> dict:
    n = req.n
    fmt = LogprobFormatter(state.engine.tokenizer) if req.logprobs is not None else None
    choices = [_Choice(text=[echoes[i // n]], text_offset=len(echoes[i // n]))
               for i in range(len(streams) * n)]
    try:
        async with aclosing(merge(streams)) as outputs:
            async for p, out in outputs:
                for d in out.outputs:
                    _add(choices[p * n + d.index], d, fmt)
    finally:
        await close_all(streams)
    return {
        "id": request_id, "object": "text_completion", "created": int(time.time()),
        "model": state.engine.model_name,
        "choices": [{"index": i, "text": "".join(c.text),
                     "logprobs": merge_completion_logprobs(c.logprobs) if fmt else None,
                     "finish_reason": c.finish_reason, "stop_reason": c.stop_reason}
                    for i, c in enumerate(choices)],
        "usage": usage(sum(len(s.prompt_token_ids) for s in streams),
                       sum(c.num_tokens for c in choices)),
    }


async def _stream(state: ServerState, req: CompletionRequest, request_id: str,
                  streams: list[EngineStream], echoes: list[str]) -> AsyncIterator[str]:
    n = req.n
    created = int(time.time())
    model = state.engine.model_name
    fmt = LogprobFormatter(state.engine.tokenizer) if req.logprobs is not None else None
    offsets = [len(echoes[i // n]) for i in range(len(streams) * n)]
    echoed = [False] * len(offsets)
    num_tokens = 0
    extra = {"usage": None} if req.include_usage else {}

    def chunk(index: int, text: str, logprobs: dict | None, finish: str | None,
              stop_reason: str | int | None) -> str:
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
        if finish is not None:
            choice["stop_reason"] = stop_reason
        return sse_data({"id": request_id, "object": "text_completion", "created": created,
                         "model": model, "choices": [choice], **extra})

    try:
        async with aclosing(merge(streams)) as outputs:
            async for p, out in outputs:
                for d in out.outputs:
                    index = p * n + d.index
                    num_tokens += len(d.token_ids)
                    text = d.text
                    if not echoed[index]:
                        text, echoed[index] = echoes[p] + text, True
                    logprobs = None
                    if fmt is not None and d.logprobs:
                        logprobs, offsets[index] = fmt.completion(d.logprobs, offsets[index])
                    if text or logprobs or d.finish_reason is not None:
                        yield chunk(index, text, logprobs, d.finish_reason, d.stop_reason)
        if req.include_usage:
            yield sse_data({"id": request_id, "object": "text_completion", "created": created,
                            "model": model, "choices": [],
                            "usage": usage(sum(len(s.prompt_token_ids) for s in streams),
                                           num_tokens)})
    except Exception as e:
        yield stream_error_event(e)
    finally:
        await close_all(streams)
    yield SSE_DONE
