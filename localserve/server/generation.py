"""Running engine requests for a route: start them, merge their outputs, abort on disconnect.

A route first *starts* its engine requests (waits for each one's first output), so that queue
full, prompt too long or a dead engine become an HTTP status before any byte is sent. Then it
reads outputs (merged across prompts for a multi-prompt completion). Whatever ends the route
early — a client disconnect, an error, a cancelled task — closes every engine iterator, which
aborts those requests in the engine and frees their KV blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar

from starlette.types import Receive

from localserve.engine.errors import PromptTooLongError
from localserve.engine.outputs import RequestOutput
from localserve.sampling_params import SamplingParams
from localserve.server.errors import APIError, from_engine_error
from localserve.server.metrics import RequestTracker, ServerMetrics

logger = logging.getLogger("localserve.server")
T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client went away before its response was complete."""


async def wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(awaitable: Awaitable[T], receive: Receive) -> T:
    """Awaits `awaitable`, cancelling it (and raising ClientDisconnected) if the client leaves."""
    task = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        raise ClientDisconnected()
    finally:
        for t in (task, watcher):
            if not t.done():
                t.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)


def fit_max_tokens(prompt_len: int, requested: int | None, max_model_len: int,
                   param: str = "max_tokens", *, prompt_param: str) -> int:
    """The request's max_tokens, or all the context left when it gave none; 400 if it won't fit
    (naming `param`, or `prompt_param` when the prompt alone fills the context).

    Never truncates the prompt: a prompt that does not fit is the client's to shorten.
    """
    room = max_model_len - prompt_len
    if room < 1:  # no max_tokens would fit: the prompt is what to change
        raise APIError(400, f"this model's maximum context length is {max_model_len} tokens; "
                            f"the prompt has {prompt_len} tokens, leaving no room to generate",
                       param=prompt_param, code=PromptTooLongError.code)
    if requested is None:
        return room
    if isinstance(requested, int) and requested >= 1 and prompt_len + requested > max_model_len:
        raise APIError(400, f"this model's maximum context length is {max_model_len} tokens; "
                            f"you requested {prompt_len + requested} tokens ({prompt_len} in the "
                            f"prompt, {requested} for the completion); shorten the prompt or "
                            f"lower {param}", param=param, code=PromptTooLongError.code)
    return requested  # SamplingParams rejects values < 1 with a message naming the field


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def check_token_ids(ids: Sequence[int], vocab_size: int, param: str = "prompt") -> None:
    bad = next((t for t in ids if t >= vocab_size), None)
    if bad is not None:
        raise APIError(400, f"token id {bad} is out of range; the vocabulary has {vocab_size} "
                            "tokens", param=param, code="invalid_value")


class EngineStream:
    """One engine request: started once, iterated once, closed exactly once."""

    def __init__(self, engine: Any, metrics: ServerMetrics, prompt_token_ids: list[int],
                 params: SamplingParams, request_id: str, priority: int = 0) -> None:
        self.engine = engine
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.request_id = request_id
        self.priority = priority
        self.tracker: RequestTracker = metrics.tracker()
        self.finished = False
        self.closed = False
        self.choices_done: set[int] = set()
        self._iter: Any = None
        self._first: RequestOutput | None = None

    async def start(self) -> None:
        """Submits the request and waits for its first output; raises APIError for engine errors."""
        self._iter = self.engine.generate(self.prompt_token_ids, self.params, self.request_id,
                                          self.priority)
        try:
            self._first = await self._iter.__anext__()
        except StopAsyncIteration:
            self.finished = True
            raise RuntimeError(f"engine ended request {self.request_id} without output") from None
        except Exception as e:
            self.finished = True  # rejected: nothing to abort
            mapped = from_engine_error(e)
            if mapped is None:
                raise
            raise mapped from None

    async def outputs(self) -> AsyncIterator[RequestOutput]:
        """Yields the request's deltas; mid-stream engine errors surface as APIError."""
        out, self._first = self._first, None
        while out is not None:
            self.tracker.observe(out)
            self.choices_done.update(d.index for d in out.outputs if d.finish_reason is not None)
            if out.finished:
                self.finished = True
            yield out
            if self.finished:
                return
            try:
                out = await self._iter.__anext__()
            except StopAsyncIteration:
                self.finished = True
                return
            except Exception as e:
                mapped = from_engine_error(e)
                if mapped is None:
                    raise
                raise mapped from None

    async def close(self) -> None:
        """Aborts the request in the engine unless it finished; never raises."""
        if self.closed:
            return
        self.closed = True
        if self.finished:
            return
        self.tracker.aborted(self.params.n - len(self.choices_done))
        aclose = getattr(self._iter, "aclose", None)
        try:
            if aclose is not None:
                await aclose()  # closing the iterator aborts the request in the engine
        except Exception:
            logger.warning("closing %s failed", self.request_id, exc_info=True)
        try:
            await self.engine.abort(self.request_id)  # idempotent; covers a half-started one
        except Exception:
            logger.warning("aborting %s failed", self.request_id, exc_info=True)


async def start_all(streams: Sequence[EngineStream]) -> None:
    """Starts every stream concurrently; on any failure (or cancellation) closes them all."""
    tasks = [asyncio.ensure_future(s.start()) for s in streams]
    try:
        await asyncio.wait(tasks)
    except BaseException:  # cancelled: the client left or the server is stopping
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close_all(streams)
        raise
    errors = [e for t in tasks if (e := t.exception()) is not None]
    if errors:
        await close_all(streams)
        # Prefer an error the client can act on over a generic one.
        raise next((e for e in errors if isinstance(e, APIError)), errors[0])


async def close_all(streams: Sequence[EngineStream]) -> None:
    for s in streams:
        await s.close()


async def merge(streams: Sequence[EngineStream]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Outputs of all streams as (stream index, output) in arrival order; closes them at the end."""
    if len(streams) == 1:
        try:
            async for out in streams[0].outputs():
                yield 0, out
        finally:
            await close_all(streams)
        return
    queue: asyncio.Queue[tuple[int, RequestOutput | BaseException | None]] = asyncio.Queue()

    async def pump(i: int, stream: EngineStream) -> None:
        try:
            async for out in stream.outputs():
                await queue.put((i, out))
            await queue.put((i, None))
        except Exception as e:
            await queue.put((i, e))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            i, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
        await close_all(streams)
