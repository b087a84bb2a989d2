"""Workload variants of gpu_bench.py: a workload named `x:variant` runs with one setting changed,
for an A/B in one process (e.g. `--only c c:pow2 c c:pow2`).

":pdl" / ":nopdl" force programmatic dependent launch on / off (kernels/triton/_common.py),
":pow2" gives decode graphs the power-of-two batch buckets of sessions 1-5
(backends/cuda/graphs.py), ":wholerows" has the fused sampling kernel scan each row in one
program, as before session 6 (kernels/triton/sampling.py), ":cublaslt" has torch's matmuls go
through cuBLASLt, ":noroute" runs every decode batch in the smallest graph that holds it (no
move to a larger bucket that measured faster), ":nogc" turns Python's cyclic garbage collector
off, ":gc700" keeps its default gen-0 threshold (the engine raises it to 50,000),
":tokenmajor" stores the KV pages token by token (the cuda runner stores them head by head:
kernels/triton/cache.py: kv_cache_pages),
":splitkeys1024" cuts decode attention into key splits of >= 1,024 keys (256 by default; the
decode graphs launch it for max_model_len keys, so (a) then runs 4 splits, not 16),
":tokens4096" / ":tokens8192" / ":tokens32768" give a step that many tokens (the engine's
max_num_batched_tokens; 16,384 by default on an 80 GB GPU: the prefill chunk size),
":prefill128" gives prefill attention the 128 x 64 tiles of 8 warps used before session 9
(kernels/triton/attention.py), ":gemvall" runs every decode linear of <= 8 rows through the
Triton gemv (the 8B's gate/up too, which keeps cuBLAS by default: backends/cuda/linear.py),
":pdlgemvall" does so with programmatic dependent launch on, so each layer is one PDL chain,
":nogatedgemm" has prefill MLPs run cuBLAS + act_and_mul instead of the gated GEMM
(kernels/triton/gated_gemm.py, Hopper, since session 10), and ":gemv16" runs decode linears of up
to 16 rows (8 by default) through the Triton gemv, with PDL in those decode graphs
(backends/cuda/linear.py: MAX_GEMV_ROWS, graphs.py: PDL_ROWS). Since session 12 one decode
row goes through the vector gemv (kernels/triton/vector_gemv.py); ":session11" runs it as
session 11 did (the batched gemv, cuBLAS for the 8B's gate/up). ":noprefillgraphs" launches
prefill steps of up to 512 tokens eagerly instead of replaying CUDA graphs
(backends/cuda/graphs.py: PrefillGraphs, on by default since session 17), ":nocompileahead"
compiles the start-up's kernels one after another at their first launches instead of in
parallel first (backends/cuda/compile_ahead.py, on by default since session 17), and
":session16" turns both off, the defaults before session 17. ":prefillgraphs",
":compileahead" and ":pgcompileahead" turn one or both on.
"""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def blas_library(name: str):
    """torch's GEMM library (cuBLAS or cuBLASLt, whose heuristics pick other kernels)."""
    import torch

    previous = torch.backends.cuda.preferred_blas_library()
    torch.backends.cuda.preferred_blas_library(name)
    try:
        yield
    finally:
        torch.backends.cuda.preferred_blas_library(previous)


@contextlib.contextmanager
def gc_disabled():
    """No cyclic garbage collection while a workload runs (is a collection pause a gap?)."""
    import gc

    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def step_tokens(config_class, tokens: int) -> contextlib.AbstractContextManager:
    """Engines built meanwhile default to `tokens` tokens a step (max_num_batched_tokens)."""
    from unittest import mock

    fill = config_class.with_batch_limits
    return mock.patch.object(config_class, "with_batch_limits",
                             lambda self, seqs, _tokens: fill(self, seqs, tokens))


def prefill_tiles_before_session_9(attention) -> contextlib.AbstractContextManager:
    """Prefill attention (more than MAX_DECODE_QUERY_LEN query tokens) at 128 x 64 tiles of
    8 warps and 2 stages, bf16/fp16 and head_dim <= 128, as before session 9."""
    import dataclasses
    from unittest import mock

    from localserve.kernels.triton._common import next_pow2

    choose = attention.choose_launch

    def old_tiles(**kw):
        spec = choose(**kw)
        if (kw["max_query_len"] <= attention.MAX_DECODE_QUERY_LEN or kw["head_dim"] > 128
                or kw.get("elem_bytes", 2) > 2):
            return spec
        group_pad = next_pow2(kw["group"])
        block_m = max(16, group_pad, min(128, group_pad * next_pow2(kw["max_query_len"])))
        return dataclasses.replace(spec, block_m=block_m, block_q=block_m // group_pad,
                                   block_n=64, num_warps=8 if block_m >= 128 else 4,
                                   num_stages=2 if block_m >= 128 else 3)

    return mock.patch.object(attention, "choose_launch", old_tiles)


def all_linears_through_gemv(linear) -> contextlib.AbstractContextManager:
    """Every half-precision decode linear of <= 8 rows takes the Triton gemv, whatever its
    size (backends/cuda/linear.py keeps cuBLAS for weights over MAX_GEMV_ELEMENTS)."""
    from unittest import mock

    return mock.patch.object(linear, "MAX_GEMV_ELEMENTS", 1 << 40)


@contextlib.contextmanager
def both(first: contextlib.AbstractContextManager, second: contextlib.AbstractContextManager):
    """Two settings at once."""
    with first, second:
        yield


def variant_setting(variant: str) -> contextlib.AbstractContextManager:
    """The setting a workload variant changes while it runs (see the module docstring)."""
    from unittest import mock

    import torch

    from localserve.backends.cuda import compile_ahead, graphs, linear
    from localserve.backends.cuda import runner as cuda_runner
    from localserve.backends.cuda.runner import CudaModelRunner
    from localserve.config import EngineConfig
    from localserve.engine import engine as engine_module
    from localserve.kernels.triton import attention, gated_gemm, sampling
    from localserve.kernels.triton._common import pdl_override
    from localserve.kernels.triton.cache import kv_cache_pages

    if variant == "pdl" and not (torch.cuda.is_available()
                                 and torch.cuda.get_device_capability()[0] >= 9):
        raise SystemExit("programmatic dependent launch needs sm_90+")
    settings = {
        "": contextlib.nullcontext,
        "pdl": lambda: pdl_override(True),
        "nopdl": lambda: pdl_override(False),
        "pow2": lambda: mock.patch.object(graphs, "bucket_sizes", lambda n: [
            1 << i for i in range(n.bit_length()) if 1 << i < n] + [n]),
        "wholerows": lambda: mock.patch.object(sampling, "PROGRAMS_PER_SM", 0),
        "cublaslt": lambda: blas_library("cublaslt"),
        "noroute": lambda: mock.patch.object(graphs, "fastest_cover", lambda times: {
            b: b for b in times}),
        "nogc": gc_disabled,
        "gc700": lambda: mock.patch.object(engine_module, "GC_GEN0_THRESHOLD", 700),
        "splitkeys1024": lambda: mock.patch.object(attention, "MIN_KEYS_PER_SPLIT", 1024),
        "tokenmajor": lambda: mock.patch.object(
            CudaModelRunner, "_empty_cache", lambda self, shape: kv_cache_pages(
                shape, self.kv_dtype, self.device, heads_major=False)),
        "prefill128": lambda: prefill_tiles_before_session_9(attention),
        "gemvall": lambda: all_linears_through_gemv(linear),
        "pdlgemvall": lambda: both(pdl_override(True), all_linears_through_gemv(linear)),
        "nogatedgemm": lambda: mock.patch.object(gated_gemm, "MIN_ROWS", 1 << 62),
        "gemv16": lambda: both(mock.patch.object(linear, "MAX_GEMV_ROWS", 16),
                               mock.patch.object(graphs, "PDL_ROWS", 16)),
        "session11": lambda: mock.patch.object(linear, "ONE_ROW_GEMV", False),
        "prefillgraphs": lambda: mock.patch.object(cuda_runner, "PREFILL_GRAPHS", True),
        "noprefillgraphs": lambda: mock.patch.object(cuda_runner, "PREFILL_GRAPHS", False),
        "compileahead": lambda: mock.patch.object(compile_ahead, "COMPILE_AHEAD", True),
        "pgcompileahead": lambda: both(mock.patch.object(cuda_runner, "PREFILL_GRAPHS", True),
                                       mock.patch.object(compile_ahead, "COMPILE_AHEAD", True)),
        "nocompileahead": lambda: mock.patch.object(compile_ahead, "COMPILE_AHEAD", False),
        "session16": lambda: both(mock.patch.object(cuda_runner, "PREFILL_GRAPHS", False),
                                  mock.patch.object(compile_ahead, "COMPILE_AHEAD", False)),
        **{f"tokens{n}": lambda n=n: step_tokens(EngineConfig, n) for n in (4096, 8192, 32768)},
    }
    if variant not in settings:
        raise SystemExit(f"unknown variant {variant!r} (known: {', '.join(settings)[2:]})")
    return settings[variant]()

