"""Run the server beside the dashboard (`localserve up --tui`) and stream its log lines.

Two ways: `SubprocessServer` (an argv; recommended: the engine cannot starve the UI and its
stdout/stderr are captured whole) and `InProcessServer` (a blocking callable run in a thread;
stdlib `logging` records are captured, so give uvicorn `log_config=None`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

LineSink = Callable[[str], None]
ExitSink = Callable[["int | None"], None]

# Our own poller's request logs would drown the server's.
_QUIET_LOGGERS = ("httpx", "httpcore")


class ServerHandle(Protocol):
    async def start(self, on_line: LineSink, on_exit: ExitSink) -> None: ...

    async def stop(self) -> None: ...


class SubprocessServer:
    """Starts `argv`, streams stdout+stderr line by line, stops with SIGTERM then SIGKILL."""

    def __init__(
        self, argv: Sequence[str], *, env: dict[str, str] | None = None, stop_timeout_s: float = 10
    ) -> None:
        self.argv = list(argv)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.stop_timeout_s = stop_timeout_s
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self, on_line: LineSink, on_exit: ExitSink) -> None:
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # the terminal's Ctrl+C goes to the TUI, not the server
                limit=1 << 20,
            )
        except OSError as e:
            on_line(f"[localserve tui] cannot start {self.argv[0]!r}: {e}")
            on_exit(None)
            return
        on_line(f"[localserve tui] started server pid {self.process.pid}: {' '.join(self.argv)}")
        self._reader = asyncio.create_task(self._pump(self.process, on_line, on_exit))

    @staticmethod
    async def _pump(
        process: asyncio.subprocess.Process, on_line: LineSink, on_exit: ExitSink
    ) -> None:
        assert process.stdout is not None
        while True:
            try:
                line = await process.stdout.readline()
            except ValueError:  # a line over the limit: skip it rather than stop reading
                continue
            if not line:
                break
            on_line(line.decode(errors="replace").rstrip())
        on_exit(await process.wait())

    def _signal(self, sig: int) -> None:
        """Signal the server's whole process group (its own session), or just it on Windows."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if hasattr(os, "killpg"):
                os.killpg(process.pid, sig)
            elif sig == signal.SIGTERM:
                process.terminate()
            else:
                process.kill()

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        self._signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), self.stop_timeout_s)
        except asyncio.TimeoutError:
            self._signal(getattr(signal, "SIGKILL", signal.SIGTERM))
            await process.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._reader, 2)

    def kill_if_running(self) -> None:
        """Last resort after the event loop is gone (the app crashed): SIGKILL, no waiting."""
        if self.process is not None and self.process.returncode is None:
            self._signal(getattr(signal, "SIGKILL", signal.SIGTERM))


class _SinkHandler(logging.Handler):
    def __init__(self, sink: LineSink) -> None:
        super().__init__(logging.INFO)
        self.sink = sink
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] in _QUIET_LOGGERS:
            return
        try:
            self.sink(self.format(record))
        except Exception:
            self.handleError(record)


class InProcessServer:
    """Runs `target()` (blocking, e.g. `uvicorn.Server(config).run`) in a daemon thread.

    Args:
        target: serves until asked to stop; its return ends the server.
        stop: asks it to stop (e.g. `lambda: setattr(server, "should_exit", True)`).
    """

    def __init__(
        self,
        target: Callable[[], object],
        stop: Callable[[], None] | None = None,
        *,
        stop_timeout_s: float = 10,
    ) -> None:
        self.target = target
        self.stop_callback = stop
        self.stop_timeout_s = stop_timeout_s
        self.thread: threading.Thread | None = None
        self._handler: _SinkHandler | None = None
        self._old_level: int | None = None

    async def start(self, on_line: LineSink, on_exit: ExitSink) -> None:
        root = logging.getLogger()
        self._handler = _SinkHandler(on_line)
        root.addHandler(self._handler)
        if root.level > logging.INFO:
            self._old_level = root.level
            root.setLevel(logging.INFO)

        def main() -> None:
            code = 0
            try:
                self.target()
            except BaseException:
                logging.getLogger("localserve.tui").exception("the server stopped with an error")
                code = 1
            on_exit(code)

        self.thread = threading.Thread(target=main, name="localserve-server", daemon=True)
        self.thread.start()

    async def stop(self) -> None:
        if self.stop_callback is not None:
            self.stop_callback()
        if self.thread is not None:
            await asyncio.to_thread(self.thread.join, self.stop_timeout_s)
        root = logging.getLogger()
        if self._handler is not None:
            root.removeHandler(self._handler)
            self._handler = None
        if self._old_level is not None:
            root.setLevel(self._old_level)
            self._old_level = None


def server_handle(
    server: Sequence[str] | Callable[[], object] | ServerHandle,
    stop: Callable[[], None] | None = None,
) -> ServerHandle:
    """An argv → `SubprocessServer`; a callable → `InProcessServer`; a handle stays itself."""
    if isinstance(server, (list, tuple)):
        return SubprocessServer(server)
    if hasattr(server, "start") and hasattr(server, "stop"):
        return server  # type: ignore[return-value]
    if callable(server):
        return InProcessServer(server, stop)
    raise TypeError(f"expected an argv list, a callable or a ServerHandle, got {server!r}")
