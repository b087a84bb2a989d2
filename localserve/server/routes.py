"""The small routes: models, tokenize/detokenize, health, version, stats and metrics."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from localserve import __version__
from localserve.server.chat import render_chat
from localserve.server.errors import APIError, error_body
from localserve.server.generation import check_token_ids
from localserve.server.protocol import DetokenizeRequest, TokenizeRequest, json_body
from localserve.server.state import ServerState, get_state, parse_body

router = APIRouter()


def _model_card(state: ServerState) -> dict:
    return {"id": state.engine.model_name, "object": "model", "created": state.created,
            "owned_by": "localserve", "max_model_len": state.engine.max_model_len}


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    return {"object": "list", "data": [_model_card(get_state(request))]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict:
    state = get_state(request)
    state.check_model(model_id)
    return _model_card(state)


@router.post("/tokenize", openapi_extra=json_body(TokenizeRequest))
async def tokenize(request: Request) -> dict:
    state = get_state(request)
    req = await parse_body(request, TokenizeRequest)
    state.check_model(req.model)
    tokenizer = state.engine.tokenizer
    if req.messages is not None:
        text = render_chat(tokenizer, req.messages, req.add_generation_prompt,
                           req.chat_template_kwargs)
        ids = tokenizer.encode(text, add_special_tokens=False)
    else:
        ids = tokenizer.encode(req.prompt or "", add_special_tokens=req.add_special_tokens)
    return {"tokens": ids, "count": len(ids), "max_model_len": state.engine.max_model_len}


@router.post("/detokenize", openapi_extra=json_body(DetokenizeRequest))
async def detokenize(request: Request) -> dict:
    state = get_state(request)
    req = await parse_body(request, DetokenizeRequest)
    state.check_model(req.model)
    check_token_ids(req.tokens, state.engine.tokenizer.vocab_size, param="tokens")
    return {"prompt": state.engine.tokenizer.decode(req.tokens, skip_special_tokens=False)}


@router.get("/health")
async def health(request: Request) -> Response:
    engine = get_state(request).engine
    if engine.errored is not None:
        return JSONResponse(error_body(503, f"engine dead: {engine.errored!r}",
                                       code="engine_dead"), status_code=503)
    if not engine.is_ready:
        return JSONResponse(error_body(503, "model loading", code="model_loading"),
                            status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/version")
async def version() -> dict:
    return {"version": __version__}


@router.get("/v1/localserve/stats")
async def stats(request: Request) -> dict:
    """The engine's live snapshot (the TUI polls this) plus the server's uptime."""
    state = get_state(request)
    if state.engine.errored is not None:
        raise APIError(503, "the inference engine has stopped", code="engine_dead")
    d = state.engine.stats().to_dict()
    d["server_uptime_s"] = time.monotonic() - state.started_at
    return d


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(get_state(request).metrics.exposition(),
                    media_type="text/plain; version=0.0.4; charset=utf-8")
