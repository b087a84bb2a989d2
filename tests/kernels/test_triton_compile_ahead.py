"""compile_ahead: the start-up's Triton kernels compiled in parallel by a dry pass first.

On the CPU: the plumbing (launches inside `dry_launches` become compile-only under Triton's
AsyncCompileMode; nothing runs the dry pass unless turned on and available) and the runner's
order (every graph bucket's forward in the dry pass, before any capture). On a GPU: a dry
launch runs nothing, and the real launch after it finds the kernel compiled.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch

triton = pytest.importorskip("triton")

# The kernels are decorated now, under the environment conftest set: the tests below set
# TRITON_INTERPRET=1 for a moment, and a first import then would make every later test
# in this process run the interpreter's kernels, on a GPU too.
import localserve.kernels.triton  # noqa: E402, F401
from localserve.backends.cuda import compile_ahead  # noqa: E402
from localserve.backends.cuda import runner as cuda_runner  # noqa: E402
from localserve.backends.cuda.graphs import DecodeGraphs, PrefillGraphs, StepGraphs  # noqa: E402
from localserve.runner.context import ReferenceAttentionOps, get_forward_context  # noqa: E402

CUDA = torch.cuda.is_available()


def test_launches_inside_dry_launches_only_compile(monkeypatch):
    """A launch (`kernel[grid](...)` is JITFunction.run with warmup=False) becomes a warm-up,
    which compiles without launching, with Triton's async compile mode active; outside,
    launches are real again."""
    from triton.runtime import _async_compile
    from triton.runtime.jit import JITFunction

    calls = []

    def run(self, *args, grid, warmup, **kwargs):
        calls.append((warmup, _async_compile.active_mode.get() is not None))

    def body(x):
        pass

    kernel = JITFunction(body)  # what triton.jit makes on a GPU (here: the interpreter's)
    monkeypatch.setattr(JITFunction, "run", run)
    with compile_ahead.dry_launches(num_workers=2):
        kernel[(1,)](0)  # the launch syntax the wrappers use
    kernel[(1,)](0)
    assert calls == [(True, True), (False, False)]


def test_not_available_in_the_interpreter(monkeypatch):
    """Interpreted kernels are not JITFunctions: a dry pass would run them for real."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not compile_ahead.available()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert compile_ahead.available() == hasattr(triton, "AsyncCompileMode")


def test_triton_key_hashed_on_a_thread(monkeypatch):
    """The cache key every compile needs is computed once, off the main thread, and cached;
    not at all under the interpreter."""
    from triton.runtime.cache import triton_key

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert compile_ahead.hash_triton_ahead() is None
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    triton_key.cache_clear()
    thread = compile_ahead.hash_triton_ahead()
    assert thread is not None and thread.daemon
    thread.join(timeout=60)
    assert not thread.is_alive() and triton_key.cache_info().currsize == 1
    assert triton_key().startswith(triton.__version__)


@pytest.mark.parametrize("enabled, available", [(False, True), (True, False)])
def test_no_dry_pass_unless_on_and_available(monkeypatch, enabled, available):
    """Its launches would be real elsewhere, on buffers the pass leaves unwritten."""
    monkeypatch.setattr(compile_ahead, "COMPILE_AHEAD", enabled)
    monkeypatch.setattr(compile_ahead, "available", lambda: available)
    passes = []
    assert compile_ahead.compile_ahead(lambda: passes.append(1)) is False
    assert passes == []


class Recorder(torch.nn.Module):
    """A model that records each forward pass's token count and max_query_len."""

    def __init__(self, hidden_size: int, log: list) -> None:
        super().__init__()
        self.hidden_size, self.log = hidden_size, log

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        meta = get_forward_context().meta
        self.log.append(("forward", input_ids.shape[0], meta.max_query_len))
        return torch.zeros(input_ids.shape[0], self.hidden_size)


def runner_after_init_kv_cache(monkeypatch, log: list, prefill_graphs: bool):
    """A CUDA runner on the CPU with a recording model and no KV pool, after init_kv_cache
    with graph captures recorded into `log` (the prefill ones take the decode ones' pool)."""
    from localserve.config import CacheConfig, EngineConfig, SchedulerConfig
    from localserve.runner.torch_runner import TorchModelRunner

    def capture_all(self):
        log.append(("capture", self.kind, self.pool))
        self.pool = ("pool", self.kind) if self.pool is None else self.pool

    monkeypatch.setattr(StepGraphs, "capture_all", capture_all)
    monkeypatch.setattr(cuda_runner, "PREFILL_GRAPHS", prefill_graphs)
    monkeypatch.setattr(TorchModelRunner, "init_kv_cache", lambda self, n: None)
    config = EngineConfig(cache=CacheConfig(block_size=4),
                          scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64))
    runner = cuda_runner.CudaModelRunner(config, torch.device("cpu"))
    runner.spec = SimpleNamespace(max_position_embeddings=32)
    runner.arch = SimpleNamespace(hidden_size=8)
    runner.kv_dtype, runner.kv_caches = torch.float32, []
    runner.model = Recorder(8, log)
    runner.ops = ReferenceAttentionOps()
    runner.init_kv_cache(num_blocks=100)
    return runner


def test_the_runner_compiles_every_bucket_before_capturing(monkeypatch):
    """With both graph kinds, the dry pass runs each bucket's forward (as its capture will:
    decode buckets one token a row, prefill buckets their token count) inside dry_launches,
    and only then are the graphs captured, the prefill ones in the decode ones' pool."""
    log: list = []

    @contextlib.contextmanager
    def recorded_dry_launches():
        log.append("dry pass begins")
        yield
        log.append("dry pass ends")

    monkeypatch.setattr(compile_ahead, "COMPILE_AHEAD", True)
    monkeypatch.setattr(compile_ahead, "available", lambda: True)
    monkeypatch.setattr(compile_ahead, "dry_launches", recorded_dry_launches)
    runner = runner_after_init_kv_cache(monkeypatch, log, prefill_graphs=True)

    assert isinstance(runner.graphs, DecodeGraphs)
    assert isinstance(runner.prefill_graphs, PrefillGraphs)
    decode = [("forward", b, 1) for b in reversed(runner.graphs.buckets)]
    prefill = [("forward", b, b) for b in reversed(runner.prefill_graphs.buckets)]
    assert decode == [("forward", 4, 1), ("forward", 2, 1), ("forward", 1, 1)]
    assert prefill == [("forward", 64, 64), ("forward", 32, 32)]
    assert log == ["dry pass begins", *decode, *prefill, "dry pass ends",
                   ("capture", "decode", None), ("capture", "prefill", ("pool", "decode"))]


def test_without_it_the_runner_only_captures(monkeypatch):
    monkeypatch.setattr(compile_ahead, "COMPILE_AHEAD", False)
    log: list = []
    runner = runner_after_init_kv_cache(monkeypatch, log, prefill_graphs=False)
    assert log == [("capture", "decode", None)] and runner.prefill_graphs is None


@pytest.mark.skipif(not CUDA, reason="compiles for the GPU and launches on it")
def test_a_dry_launch_runs_nothing_and_leaves_the_kernel_compiled():
    """The dry launch writes nothing (the output keeps its NaN); the real launch after it
    compiles nothing (Triton's JIT cache hook sees no compile) and is right."""
    from triton import knobs

    from localserve.kernels import reference
    from localserve.kernels.triton import rms_norm
    from localserve.kernels.triton._common import poisoned_outputs

    # A width no other test uses, so this process has not compiled this variant yet.
    width = 4000 + 8 * int(torch.randint(0, 1000, ()).item())
    x = torch.randn(3, width, device="cuda", dtype=torch.bfloat16)
    weight = torch.randn(width, device="cuda", dtype=torch.bfloat16)
    with poisoned_outputs(), compile_ahead.dry_launches(num_workers=2):
        out, _ = rms_norm(x, weight, 1e-6)
    torch.cuda.synchronize()
    assert out.isnan().all()
    compiles = []
    previous = knobs.runtime.jit_cache_hook
    knobs.runtime.jit_cache_hook = lambda **kw: compiles.append(kw["fn"]) and False
    try:
        out, _ = rms_norm(x, weight, 1e-6)
    finally:
        knobs.runtime.jit_cache_hook = previous
    assert compiles == []
    want, _ = reference.rms_norm(x.float(), weight.float(), 1e-6)
    assert (out.float() - want).abs().max().item() <= 2e-2 * want.abs().max().item()
