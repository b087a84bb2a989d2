"""Compile the Triton kernels a start-up will launch on many threads at once, before launching.

A cold start (empty Triton cache) is mostly Triton compiling two dozen kernel variants one
after another as the warm-up and the graph captures first launch them: H100, session 14, the
8B's profiled start-up (27.0 s under cProfile) spent 6.4 s waiting on ptxas and gcc and 2.6 s
in LLVM (docs/benchmarks.md). A *dry* pass runs the same forward passes first with every Triton
launch turned into a compile submitted to a thread pool (Triton's `AsyncCompileMode` and
`warmup=True` launches): nothing is launched, the torch ops in between run on whatever the
skipped kernels left in their outputs, and leaving the pass waits for the compiles, which land
in the kernels' in-memory caches where the real launches find them. A variant the dry pass
misses is compiled at its first real launch, as without it.

On by default (`COMPILE_AHEAD`; LOCALSERVE_COMPILE_AHEAD=0 turns it off). H100, session 17, the
8B's cold start in fresh processes, prefill graphs off: 9.3 and 11.5 s with it, 13.6, 14.1
and 17.6 s without (docs/benchmarks.md). Also always on: `hash_triton_ahead`, Triton's cache
key hashed while the weights load (not timed apart).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

COMPILE_AHEAD = os.environ.get("LOCALSERVE_COMPILE_AHEAD", "1") != "0"
# Compiles at once: each is mostly one thread in LLVM, then a ptxas (and a gcc) subprocess.
MAX_WORKERS = 16


def _compiling_triton():
    """The triton module where it compiles kernels; None without Triton or in its interpreter,
    which compiles nothing and whose kernels are not JITFunctions (their launches run)."""
    try:
        import triton

        from localserve.kernels.triton._common import interpreting
    except ImportError:
        return None
    return None if interpreting() else triton


def available() -> bool:
    """Whether this Triton compiles in parallel without launching (its AsyncCompileMode:
    triton 3.6 has it; older ones compile at each first launch, as without a dry pass)."""
    return hasattr(_compiling_triton(), "AsyncCompileMode")


def hash_triton_ahead() -> threading.Thread | None:
    """Starts computing Triton's cache key on a thread, so that it overlaps loading the weights;
    join the thread before the first compile, which needs the key (the cache lookup does too).
    The key is a sha256 of Triton's 415 MB compiler library: 1.1 s of session 14's profiled
    H100 start-up. None where Triton compiles nothing."""
    if _compiling_triton() is None:
        return None
    from triton.runtime.cache import triton_key

    thread = threading.Thread(target=triton_key, name="triton-key", daemon=True)
    thread.start()
    return thread


def workers() -> int:
    """Compile threads: one per core, at most MAX_WORKERS."""
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


@contextlib.contextmanager
def dry_launches(num_workers: int | None = None) -> Iterator[None]:
    """Inside, every Triton JIT launch compiles its kernel on a thread pool and launches
    nothing; leaving waits for every compile, then loads each kernel and builds its launcher
    (a C stub gcc compiles, 24 of them 3.5 s in that profile) on the pool too, which each
    first launch would otherwise do one after another. Needs `available()`."""
    import triton
    from triton.runtime.jit import JITFunction

    launch = JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        return launch(self, *args, grid=grid, warmup=True, **kwargs)

    start = time.perf_counter()
    num_workers = num_workers or workers()
    with ThreadPoolExecutor(num_workers, thread_name_prefix="triton-compile",
                            **_on_this_gpu()) as pool:
        with triton.AsyncCompileMode(pool) as mode:  # leaving it waits for the compiles
            JITFunction.run = compile_only  # process-wide: start-up launches from one thread
            try:
                yield
            finally:
                JITFunction.run = launch
        kernels = [k.kernel for k in mode.future_kernels.values() if k.kernel is not None]
        for failed in pool.map(_load, kernels):
            if failed:  # its first launch loads it again, and raises what it raises
                log.debug("loading a compiled kernel ahead failed: %s", failed)
    log.info("compiled and loaded %d Triton kernels ahead on %d threads in %.2f s",
             len(kernels), num_workers, time.perf_counter() - start)


def _on_this_gpu() -> dict:
    """Pool threads start on the caller's GPU: Triton loads a kernel on the current device."""
    import torch

    if not torch.cuda.is_available():
        return {}
    return {"initializer": torch.cuda.set_device, "initargs": (torch.cuda.current_device(),)}


def _load(kernel) -> Exception | None:
    """Loads a compiled kernel and builds its launcher, as its first launch would."""
    try:
        kernel._init_handles()
    except Exception as e:  # a later launch retries (its module is still None)
        return e
    return None


def compile_ahead(dry_pass: Callable[[], None]) -> bool:
    """Runs `dry_pass` (forward passes as the start-up will run them) inside `dry_launches`
    when COMPILE_AHEAD is on and this Triton has it; returns whether it ran. Never runs it
    otherwise: its launches would be real, on buffers it leaves unwritten."""
    if not (COMPILE_AHEAD and available()):
        return False
    with dry_launches():
        dry_pass()
    return True
