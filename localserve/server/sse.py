"""Server-sent events: a response that streams `data:` lines and stops when the client leaves.

Sending and watching for `http.disconnect` run side by side, so a client that hangs up is
noticed at once — even while the engine has produced nothing new to send — and the event
generator is closed, which aborts its engine requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from localserve.server.errors import error_body, from_engine_error, internal_error_body
from localserve.server.generation import wait_for_disconnect

logger = logging.getLogger("localserve.server")


def sse_data(payload: dict[str, Any] | str) -> str:
    text = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {text}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def stream_error_event(e: Exception) -> str:
    """An error that happens after the stream began, as OpenAI sends it: a `data:` error object."""
    mapped = from_engine_error(e)
    if mapped is None:
        logger.error("error while streaming a response", exc_info=e)
        return sse_data(internal_error_body())
    return sse_data(error_body(mapped.status, mapped.message, param=mapped.param,
                               code=mapped.code))


class EventStreamResponse(Response):
    """Streams the strings of `events` (already SSE-framed) as text/event-stream."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[str], headers: dict[str, str] | None = None) -> None:
        super().__init__(content=None, status_code=200, headers={
            "cache-control": "no-cache", "x-accel-buffering": "no", **(headers or {})},
            media_type=self.media_type)
        # The length is unknown: drop the `content-length: 0` Response adds for an empty body.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})

        async def pump() -> None:
            async for event in self.events:
                await send({"type": "http.response.body", "body": event.encode("utf-8"),
                            "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        sender = asyncio.ensure_future(pump())
        watcher = asyncio.ensure_future(wait_for_disconnect(receive))
        try:
            await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if sender.done() and not sender.cancelled():
                error = sender.exception()
                if error is not None and not isinstance(error, OSError):
                    logger.error("event stream failed", exc_info=error)
        finally:
            for task in (sender, watcher):
                task.cancel()
            await asyncio.gather(sender, watcher, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.events.aclose()  # type: ignore[attr-defined]
