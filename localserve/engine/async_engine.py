"""AsyncLLMEngine: one engine thread stepping the LLMEngine, per-request asyncio queues.

The server's event loop never runs model code. Requests and aborts reach the engine thread
through a command queue; outputs come back through each request's asyncio.Queue.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from localserve.config import EngineConfig
from localserve.engine.engine import LLMEngine
from localserve.engine.errors import EngineDeadError
from localserve.engine.outputs import EngineStats, RequestOutput
from localserve.sampling_params import SamplingParams

log = logging.getLogger(__name__)


class _Stream:
    """Where one request's outputs go: a queue owned by the caller's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self.admitted: asyncio.Future[None] = loop.create_future()

    def put(self, item: RequestOutput | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def admit(self, error: BaseException | None) -> None:
        def settle() -> None:
            if self.admitted.done():  # the caller went away meanwhile
                return
            if error is None:
                self.admitted.set_result(None)
            else:
                self.admitted.set_exception(error)

        self.loop.call_soon_threadsafe(settle)


class AsyncLLMEngine:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._commands: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._wakeup = threading.Event()
        self._lock = threading.Lock()  # step() vs stats() from other threads
        self._stopping = False
        self._errored: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="localserve-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, config: EngineConfig,
                    on_progress: Callable[[str, float], None] | None = None) -> AsyncLLMEngine:
        engine = LLMEngine.from_config(config, on_progress)
        if on_progress:
            on_progress("ready", 1.0)
        return cls(engine)

    # -- facts the server needs ------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def model_name(self) -> str:
        return self.engine.info.model_name

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def backend_name(self) -> str:
        return self.engine.info.backend

    @property
    def device_name(self) -> str:
        return self.engine.info.device

    @property
    def is_ready(self) -> bool:
        return self._errored is None and self._thread.is_alive()

    @property
    def errored(self) -> BaseException | None:
        return self._errored

    # -- requests --------------------------------------------------------------------------
    async def generate(self, prompt_token_ids: list[int], params: SamplingParams,
                       request_id: str, priority: int = 0) -> AsyncIterator[RequestOutput]:
        """Yields output deltas until the request finishes; closing the iterator aborts it."""
        if not self.is_ready:
            raise EngineDeadError("the engine is not running") from self._errored
        stream = _Stream(asyncio.get_running_loop())
        self._send("add", (request_id, list(prompt_token_ids), params, priority,
                           time.monotonic(), stream))
        finished = False
        try:
            await stream.admitted
            while not finished:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:
                self._send("abort", request_id)

    async def abort(self, request_id: str) -> None:
        self._send("abort", request_id)

    def stats(self) -> EngineStats:
        with self._lock:
            return self.engine.stats()

    def shutdown(self) -> None:
        self._stopping = True
        self._wakeup.set()
        self._thread.join(timeout=30)
        self.engine.shutdown()

    # -- the engine thread -----------------------------------------------------------------
    def _send(self, kind: str, payload: Any) -> None:
        self._commands.put((kind, payload))
        self._wakeup.set()

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._drain_commands()
                if not self.engine.has_unfinished_requests():
                    self._wakeup.wait()
                    self._wakeup.clear()
                    continue
                with self._lock:
                    outputs = self.engine.step()
                for out in outputs:
                    stream = self._streams.get(out.request_id)
                    if stream is not None:
                        stream.put(out)
                        if out.finished:
                            del self._streams[out.request_id]
        except BaseException as e:  # the engine is dead: tell every waiting caller
            log.exception("engine thread died")
            self._errored = e
            dead = EngineDeadError(f"the engine thread died: {e!r}")
            for stream in self._streams.values():
                stream.admit(dead)
                stream.put(dead)
            self._streams.clear()
            while not self._commands.empty():
                kind, payload = self._commands.get()
                if kind == "add":
                    payload[-1].admit(dead)

    def _drain_commands(self) -> None:
        while not self._commands.empty():
            kind, payload = self._commands.get()
            if kind == "add":
                request_id, prompt, params, priority, arrival, stream = payload
                try:
                    with self._lock:
                        self.engine.add_request(request_id, prompt, params, priority, arrival)
                except Exception as e:  # bad input or a full queue: the caller's error
                    stream.admit(e)
                    continue
                self._streams[request_id] = stream
                stream.admit(None)
            elif kind == "abort":
                stream = self._streams.pop(payload, None)
                with self._lock:
                    final = self.engine.abort(payload)
                if stream is not None and final is not None:
                    stream.put(final)  # a caller still iterating sees finish_reason "abort"
