"""OpenAI-shaped errors: one exception type, one JSON body, one mapping from engine errors.

Every failure leaves the server as `{"error": {"message", "type", "param", "code"}}` with the
right status. Engine errors are mapped by their class, never by their message text.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from localserve.engine.errors import EngineDeadError, PromptTooLongError, QueueFullError

logger = logging.getLogger("localserve.server")

# OpenAI's error "type" for each status we produce.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}


class APIError(Exception):
    """An error the client should see as-is (status, message, param, code)."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.status, self.message, param=self.param, code=self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(status: int, message: str, *, param: str | None = None,
               code: str | None = None) -> dict:
    kind = _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def from_engine_error(e: BaseException) -> APIError | None:
    """Maps an exception raised by `engine.generate` to the client's error (None: a bug)."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, PromptTooLongError):
        return APIError(400, str(e), param="messages", code=PromptTooLongError.code)
    if isinstance(e, QueueFullError):
        retry = max(1, int(getattr(e, "retry_after_s", 1) or 1))
        return APIError(429, f"the server is at capacity ({e}); retry after {retry}s",
                        code="rate_limit_exceeded", headers={"Retry-After": str(retry)})
    if isinstance(e, EngineDeadError):
        return engine_dead()
    if isinstance(e, ValueError):  # SamplingParams and the engine name the bad field
        return invalid_value(e)
    return None


def invalid_value(e: ValueError) -> APIError:
    """A 400 for a request value the engine refused, naming the parameter where it is known."""
    return APIError(400, str(e), param=getattr(e, "param", None), code="invalid_value")


def engine_dead() -> APIError:
    return APIError(503, "the inference engine has stopped; the server is shutting down",
                    code="engine_dead")


def not_ready() -> APIError:
    return APIError(503, "the model is still loading; retry shortly", code="model_loading",
                    headers={"Retry-After": "1"})


# Parts of a pydantic error location that name a union member, not a field ("prompt.str").
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "bytes"}


def _where(loc: tuple) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(p for p in parts if p not in _TYPE_TAGS and "[" not in p and "-" not in p)


def validation_error(e: ValidationError | RequestValidationError) -> APIError:
    """A pydantic validation failure as one 400 naming the first bad field."""
    errors = e.errors()
    first = errors[0] if errors else {}
    param = _where(tuple(first.get("loc", ()))) or None
    if first.get("type") == "json_invalid":
        return APIError(400, f"the body is not valid JSON: {first.get('msg', '')}",
                        code="invalid_json")
    parts = []
    for err in errors[:5]:
        where = _where(tuple(err.get("loc", ()))) or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return APIError(400, "; ".join(parts) + more, param=param, code="invalid_value")


async def handle_api_error(request: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, APIError)
    return e.response()


async def handle_validation_error(request: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, RequestValidationError | ValidationError)
    return validation_error(e).response()


async def handle_http_exception(request: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, StarletteHTTPException)
    status = e.status_code
    if status == 404:
        message = f"no route {request.method} {request.url.path}"
    elif status == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(e.detail) if e.detail else HTTPStatus(status).phrase
    return JSONResponse(error_body(status, message), status_code=status,
                        headers=dict(e.headers or {}))


async def handle_client_disconnected(request: Request, e: Exception) -> Response:
    # Nobody is listening; 499 (nginx's "client closed request") shows up in access logs.
    return Response(status_code=499)


def internal_error_body() -> dict:
    return error_body(500, "internal server error (the server logged the details)",
                      code="internal_error")
