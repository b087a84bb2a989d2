"""Running the server as a process: bind, load, serve, watch the engine, shut down cleanly.

Order matters: the port is bound before the weights load (a busy port fails in a second, not
after a minute of loading); the ready line is printed only once uvicorn accepts connections;
a watchdog turns a dead engine thread into a non-zero exit instead of a server that hangs.
SIGINT/SIGTERM stop accepting, let open requests finish (up to `graceful_shutdown_s`), then
shut the engine down and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

import uvicorn

from localserve.server.app import create_app
from localserve.settings import Settings

logger = logging.getLogger("localserve.server")

EngineFactory = Callable[[Settings, Callable[[str, float], None]], Any]
EXIT_ENGINE_DEAD = 3


class StartupError(Exception):
    """A problem the user can fix (busy port, bad address); the CLI prints it and exits 2."""


def resolve_api_key(settings: Settings) -> tuple[Settings, str | None]:
    """A non-loopback bind without a key gets a generated one (returned to print once)."""
    if settings.api_key or settings.no_api_key or settings.is_loopback:
        return settings, None
    key = "ls-" + secrets.token_urlsafe(24)
    return settings.model_copy(update={"api_key": key}), key


def bind_socket(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise StartupError(f"cannot resolve --host {host!r}: {e.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port} ({e.strerror}); is another server "
                           "running there? pick another with --port") from None
    sock.set_inheritable(True)
    return sock


class ProgressBar:
    """Renders the engine's on_progress(stage, fraction) calls: a bar on a TTY, lines elsewhere."""

    def __init__(self, out: TextIO = sys.stderr, width: int = 30) -> None:
        self.out = out
        self.width = width
        self.tty = out.isatty()
        self.stage: str | None = None
        self.lock = threading.Lock()  # the engine may report from its loader thread

    def __call__(self, stage: str, fraction: float) -> None:
        fraction = min(1.0, max(0.0, float(fraction)))
        with self.lock:
            if self.tty:
                filled = int(fraction * self.width)
                bar = "#" * filled + "-" * (self.width - filled)
                self.out.write(f"\r{stage[:28]:<28} [{bar}] {fraction:4.0%}")
                if fraction >= 1.0:
                    self.out.write("\n")
            elif stage != self.stage:
                self.out.write(f"{stage}{'' if fraction >= 1.0 else '...'}\n")
            self.stage = stage
            self.out.flush()


def load_engine(settings: Settings, on_progress: Callable[[str, float], None]) -> Any:
    """The real engine (imported lazily: it pulls in torch)."""
    from localserve.engine.async_engine import AsyncLLMEngine

    return AsyncLLMEngine.from_config(settings.to_engine_config(), on_progress=on_progress)


def ready_line(settings: Settings, port: int, engine: Any) -> str:
    url = settings.model_copy(update={"port": port}).base_url
    return (f"localserve ready: {url} (model {engine.model_name}, "
            f"backend {engine.backend_name})")


class Launcher:
    """One server run: owns the socket, the engine, the uvicorn server and the exit code."""

    def __init__(self, settings: Settings, engine_factory: EngineFactory = load_engine,
                 out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> None:
        self.settings, generated_key = resolve_api_key(settings)
        self.generated_key = generated_key
        self.engine_factory = engine_factory
        self.out, self.err = out, err
        self.exit_code = 0
        self.engine: Any = None
        self.server: uvicorn.Server | None = None
        self.port = settings.port
        self.ready = threading.Event()

    def prepare(self) -> socket.socket:
        """Binds the port, then loads the engine with a progress bar. Raises StartupError."""
        s = self.settings
        sock = bind_socket(s.host, s.port)
        self.port = sock.getsockname()[1]
        try:
            self.engine = self.engine_factory(s, ProgressBar(self.err))
        except BaseException:
            sock.close()
            raise
        app = create_app(self.engine, s)
        config = uvicorn.Config(app, log_level=s.log_level, access_log=s.log_level == "debug",
                                timeout_graceful_shutdown=s.graceful_shutdown_s,
                                lifespan="off", server_header=False)
        self.server = uvicorn.Server(config)
        return sock

    async def run_async(self, sock: socket.socket) -> int:
        assert self.server is not None
        serve = asyncio.ensure_future(self.server.serve(sockets=[sock]))
        watchdog = asyncio.ensure_future(self._watchdog())
        try:
            while not self.server.started and not serve.done():
                await asyncio.sleep(0.02)
            if self.server.started:
                self._announce()
            await serve
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        return self.exit_code

    async def _watchdog(self) -> None:
        """Exits the process (non-zero) if the engine thread dies, so a supervisor restarts it."""
        assert self.server is not None
        while True:
            await asyncio.sleep(0.25)
            error = self.engine.errored
            if error is not None:
                logger.error("the engine thread died (%r); shutting down", error)
                self.err.write(f"localserve: engine died: {error!r}; exiting\n")
                self.exit_code = EXIT_ENGINE_DEAD
                self.server.should_exit = True
                return

    def _announce(self) -> None:
        if self.generated_key:
            self.err.write(
                f"localserve: {self.settings.host} is reachable from other machines and no "
                "--api-key was given, so this run uses a generated key (shown once):\n"
                f"  API key: {self.generated_key}\n"
                "  choose your own with --api-key or LOCALSERVE_API_KEY; "
                "--no-api-key turns the check off\n")
            self.err.flush()
        self.out.write(ready_line(self.settings, self.port, self.engine) + "\n")
        self.out.flush()
        self.ready.set()

    def shutdown_engine(self) -> None:
        if self.engine is not None:
            try:
                self.engine.shutdown()
            except Exception:
                logger.exception("engine shutdown failed")

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True


def serve(settings: Settings, engine_factory: EngineFactory = load_engine,
          out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Serves until SIGINT/SIGTERM (exit 0) or the engine dies (exit 3)."""
    launcher = Launcher(settings, engine_factory, out, err)
    sock = launcher.prepare()
    signalled: list[int] = []
    # uvicorn re-raises the signal that stopped it once it is done; these handlers catch that
    # re-raise so the engine still gets shut down and the exit code stays ours.
    previous = {sig: signal.signal(sig, lambda s, f: signalled.append(s))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return asyncio.run(launcher.run_async(sock))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        launcher.shutdown_engine()
        sock.close()
        if signalled:
            err.write("localserve: stopped\n")


def serve_in_thread(settings: Settings, engine_factory: EngineFactory = load_engine,
                    out: TextIO = sys.stdout, err: TextIO = sys.stderr,
                    timeout_s: float = 30.0) -> tuple[Launcher, threading.Thread]:
    """Starts the server on a background thread (for the TUI, which needs the main thread)."""
    launcher = Launcher(settings, engine_factory, out, err)
    sock = launcher.prepare()
    result: dict[str, int] = {}

    def target() -> None:
        try:
            result["code"] = asyncio.run(launcher.run_async(sock))
        finally:
            launcher.shutdown_engine()
            sock.close()

    thread = threading.Thread(target=target, name="localserve-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not launcher.ready.wait(0.05):
        if not thread.is_alive() or time.monotonic() > deadline:
            launcher.stop()
            raise StartupError("the server did not start")
    return launcher, thread
