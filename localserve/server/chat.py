"""POST /v1/chat/completions: messages through the model's chat template, n choices out.

Streaming follows OpenAI exactly: for each choice a role delta first, then content deltas,
then a chunk with an empty delta and the finish_reason; with include_usage every chunk
carries `"usage": null` and a last chunk with no choices carries the usage; then [DONE].
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from localserve.server.errors import APIError, invalid_value
from localserve.server.generation import (
    EngineStream,
    close_all,
    fit_max_tokens,
    merge,
    start_all,
    until_disconnect,
    usage,
)
from localserve.server.logprobs import LogprobFormatter
from localserve.server.protocol import ChatCompletionRequest, ChatMessage, json_body
from localserve.server.sse import SSE_DONE, EventStreamResponse, sse_data, stream_error_event
from localserve.server.state import ServerState, get_state, parse_body

router = APIRouter()


def render_chat(tokenizer: Any, messages: list[ChatMessage], add_generation_prompt: bool,
                template_kwargs: dict[str, Any] | None = None) -> str:
    """The prompt text from the model's chat template; 400 when there is none or it refuses."""
    dicts = [m.to_template_dict() for m in messages]
    extra = {k: v for k, v in (template_kwargs or {}).items()
             if k not in ("messages", "add_generation_prompt")}
    try:
        return tokenizer.apply_chat_template(dicts, add_generation_prompt=add_generation_prompt,
                                             **extra)
    except ValueError as e:
        raise APIError(400, f"cannot apply the chat template: {e}", param="messages",
                       code="invalid_value") from None
    except TypeError as e:
        if not extra:
            raise
        # e.g. a kwarg that collides with one the template machinery passes itself
        raise APIError(400, f"chat_template_kwargs rejected: {e}", param="chat_template_kwargs",
                       code="invalid_value") from None
    except Exception as e:
        # A template's own raise_exception() (e.g. "roles must alternate") is a jinja2 error.
        if type(e).__module__.startswith("jinja2"):
            raise APIError(400, f"the chat template rejected the messages: {e}",
                           param="messages", code="invalid_value") from None
        raise


@router.post("/v1/chat/completions", openapi_extra=json_body(ChatCompletionRequest))
async def create_chat_completion(request: Request) -> Response:
    state = get_state(request)
    req = await parse_body(request, ChatCompletionRequest)
    state.check_model(req.model)
    if (bad := req.unsupported()) is not None:
        raise APIError(400, bad[1], param=bad[0], code="unsupported")
    state.check_engine()
    engine = state.engine
    prompt = render_chat(engine.tokenizer, req.messages, req.add_generation_prompt,
                         req.chat_template_kwargs)
    # The template already holds the special tokens (BOS etc.); don't add them twice.
    ids = engine.tokenizer.encode(prompt, add_special_tokens=False)
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    max_tokens = fit_max_tokens(len(ids), req.requested_max_tokens, engine.max_model_len, param,
                                prompt_param="messages")
    try:
        params = req.sampling_params(max_tokens=max_tokens, logprobs=req.num_logprobs)
    except ValueError as e:
        error = invalid_value(e)
        if error.param == "max_tokens":  # the field the client sent
            error.param = param
        raise error from None
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    streams = [EngineStream(engine, state.metrics, ids, params, request_id, req.priority)]
    await until_disconnect(start_all(streams), request.receive)
    if req.stream:
        return EventStreamResponse(_stream(state, req, request_id, streams))
    body = await until_disconnect(_collect(state, req, request_id, streams), request.receive)
    return JSONResponse(body)


async def _collect(state: ServerState, req: ChatCompletionRequest, request_id: str,
                   streams: list[EngineStream]) -> dict:
    fmt = LogprobFormatter(state.engine.tokenizer) if req.logprobs else None
    texts: list[list[str]] = [[] for _ in range(req.n)]
    logprobs: list[list[dict]] = [[] for _ in range(req.n)]
    finish: list[tuple[str | None, str | int | None]] = [(None, None)] * req.n
    num_tokens = 0
    try:
        async with aclosing(merge(streams)) as outputs:
            async for _, out in outputs:
                for d in out.outputs:
                    texts[d.index].append(d.text)
                    num_tokens += len(d.token_ids)
                    if fmt is not None:
                        logprobs[d.index].extend(fmt.chat(d.logprobs))
                    if d.finish_reason is not None:
                        finish[d.index] = (d.finish_reason, d.stop_reason)
    finally:
        await close_all(streams)
    return {
        "id": request_id, "object": "chat.completion", "created": int(time.time()),
        "model": state.engine.model_name,
        "choices": [{"index": i,
                     "message": {"role": "assistant", "content": "".join(texts[i])},
                     "logprobs": {"content": logprobs[i], "refusal": None} if fmt else None,
                     "finish_reason": finish[i][0], "stop_reason": finish[i][1]}
                    for i in range(req.n)],
        "usage": usage(len(streams[0].prompt_token_ids), num_tokens),
    }


async def _stream(state: ServerState, req: ChatCompletionRequest, request_id: str,
                  streams: list[EngineStream]) -> AsyncIterator[str]:
    created = int(time.time())
    model = state.engine.model_name
    fmt = LogprobFormatter(state.engine.tokenizer) if req.logprobs else None
    extra = {"usage": None} if req.include_usage else {}
    num_tokens = 0

    def chunk(index: int, delta: dict, logprobs: list[dict] | None = None,
              finish: str | None = None, stop_reason: str | int | None = None) -> str:
        choice: dict[str, Any] = {
            "index": index, "delta": delta,
            "logprobs": {"content": logprobs, "refusal": None} if logprobs is not None else None,
            "finish_reason": finish}
        if finish is not None:
            choice["stop_reason"] = stop_reason
        return sse_data({"id": request_id, "object": "chat.completion.chunk",
                         "created": created, "model": model, "choices": [choice], **extra})

    try:
        for i in range(req.n):
            yield chunk(i, {"role": "assistant", "content": ""})
        async with aclosing(merge(streams)) as outputs:
            async for _, out in outputs:
                for d in out.outputs:
                    num_tokens += len(d.token_ids)
                    lps = fmt.chat(d.logprobs) if fmt is not None and d.logprobs else None
                    if d.text or lps:
                        yield chunk(d.index, {"content": d.text}, lps)
                    if d.finish_reason is not None:
                        yield chunk(d.index, {}, None, d.finish_reason, d.stop_reason)
        if req.include_usage:
            yield sse_data({"id": request_id, "object": "chat.completion.chunk",
                            "created": created, "model": model, "choices": [],
                            "usage": usage(len(streams[0].prompt_token_ids), num_tokens)})
    except Exception as e:
        yield stream_error_event(e)
    finally:
        await close_all(streams)
    yield SSE_DONE
