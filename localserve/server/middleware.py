"""Pure-ASGI middlewares: catch-all 500s, API-key check, request-body size limit.

They run before FastAPI parses anything, so an oversized or unauthenticated request costs no
JSON parsing, and a chunked body is counted as it arrives.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from localserve.server.errors import error_body, internal_error_body

logger = logging.getLogger("localserve.server")


async def send_json(send: Send, status: int, body: dict,
                    headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()), *headers]})
    await send({"type": "http.response.body", "body": payload})


class CatchAllMiddleware:
    """Turns an unexpected exception into a logged traceback and a generic 500; never re-raises.

    The server keeps serving: one request's bug is that request's 500.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            logger.exception("unhandled error serving %s %s", scope.get("method"),
                             scope.get("path"))
            if not started:
                await send_json(send, 500, internal_error_body())


class APIKeyMiddleware:
    """Requires `Authorization: Bearer KEY` on the protected path prefixes.

    /health, /version and /metrics stay open so that probes and Prometheus need no secret;
    everything that reads prompts or spends compute is behind the key.
    """

    def __init__(self, app: ASGIApp, api_key: str,
                 protected_prefixes: tuple[str, ...] = ("/v1", "/tokenize", "/detokenize")) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()
        self.protected = protected_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") == "OPTIONS" \
                or not scope["path"].startswith(self.protected):
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                given = value
                break
        # Constant-time: the comparison does not leak how much of the key matched.
        if not hmac.compare_digest(given, self.expected):
            message = ("missing API key: send it as 'Authorization: Bearer KEY'" if not given
                       else "invalid API key")
            await send_json(send, 401, error_body(401, message, code="invalid_api_key"),
                            headers=[(b"www-authenticate", b"Bearer")])
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Reads the whole request body up front and rejects it with 413 beyond `max_bytes`.

    Content-Length is checked first; a chunked body is counted while it streams in. The app
    then gets the buffered body, and later `receive()` calls go to the client (so the app still
    sees `http.disconnect`).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await send_json(send, 400, error_body(400, "invalid Content-Length header"))
                    return
                if declared > self.max_bytes:
                    await self._too_large(send)
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        await send_json(send, 413, error_body(
            413, f"request body exceeds {self.max_bytes} bytes "
                 "(raise it with --max-request-body-bytes)", code="request_too_large"),
            headers=[(b"connection", b"close")])
