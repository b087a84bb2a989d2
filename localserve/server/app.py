"""`create_app(engine, settings)`: the FastAPI application, composed from its parts.

The app owns no engine lifecycle: the caller (the CLI, a test) builds the engine, hands it
in, and shuts it down. Middlewares from the outside in: CORS (only with --allowed-origins),
catch-all 500s, API key, body-size limit; then FastAPI's routing.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from localserve import __version__
from localserve.server import chat, completions, routes
from localserve.server.errors import (
    APIError,
    handle_api_error,
    handle_client_disconnected,
    handle_http_exception,
    handle_validation_error,
)
from localserve.server.generation import ClientDisconnected
from localserve.server.metrics import ServerMetrics
from localserve.server.middleware import APIKeyMiddleware, BodyLimitMiddleware, CatchAllMiddleware
from localserve.server.protocol import openapi_components
from localserve.server.state import ServerState
from localserve.settings import Settings


def create_app(engine: Any, settings: Settings) -> FastAPI:
    """Builds the OpenAI-compatible app around a running engine.

    Args:
        engine: an `AsyncLLMEngine` (or an object with the same surface).
        settings: the server settings; `api_key`, `allowed_origins` and
            `max_request_body_bytes` shape the middlewares.
    Returns:
        The ASGI app; serve it with uvicorn (`localserve.server.launch` does).
    """
    app = FastAPI(title="localserve", version=__version__,
                  description="OpenAI-compatible LLM inference server")
    app.state.localserve = ServerState(engine=engine, settings=settings,
                                       metrics=ServerMetrics(engine))
    for router in (completions.router, chat.router, routes.router):
        app.include_router(router)
    _document_request_models(app)
    app.add_exception_handler(APIError, handle_api_error)
    app.add_exception_handler(ClientDisconnected, handle_client_disconnected)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(ValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_exception)
    # add_middleware prepends: the last added is the outermost.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_body_bytes)
    if settings.api_key:
        app.add_middleware(APIKeyMiddleware, api_key=settings.api_key)
    app.add_middleware(CatchAllMiddleware)
    if settings.allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.allowed_origins,
                           allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["authorization", "content-type"],
                           expose_headers=["retry-after"])
    return app


def _document_request_models(app: FastAPI) -> None:
    """Adds the request models to the OpenAPI spec (routes parse bodies themselves)."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version,
                               description=app.description, routes=app.routes)
            spec.setdefault("components", {}).setdefault("schemas", {}).update(
                openapi_components())
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = build  # type: ignore[method-assign]
