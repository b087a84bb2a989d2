"""Helpers shared by the Triton kernel tests and benchmarks/triton_kernels.py.

Inputs are built here once so the tests and the benchmark measure the same thing: a random
packed batch over a paged KV cache whose unused blocks (and the block-table padding) hold NaN,
so a kernel that reads outside a sequence's blocks cannot pass.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

from localserve.kernels.triton._common import interpreting
from localserve.kernels.triton.cache import kv_cache_pages

# Bounds on max|out - ref| / max|ref| per output dtype: fp32 is the interpreter's exact path;
# fp16/bf16 allow for the output rounding (half an ulp: 2^-11 / 2^-8) plus fp32 reordering and,
# in attention, P rounded to the input dtype before the P @ V product.
ATTENTION_TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}
ELEMENTWISE_TOL = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def device() -> torch.device:
    """Where the kernels run: the CPU under the interpreter, else the current GPU."""
    return torch.device("cpu") if interpreting() else torch.device("cuda")


def full_shapes() -> bool:
    """Full model-sized shapes on a GPU; tiny ones in the (slow) interpreter."""
    return not interpreting()


def fresh_seed() -> int:
    """A new random seed per call (fresh inputs each run), returned so failures can print it."""
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    return seed


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max|out - ref| / max|ref| in fp64; NaN anywhere in `out` gives inf."""
    out64, ref64 = out.double(), ref.double()
    if torch.isnan(out64).any():
        return float("inf")
    scale = ref64.abs().max().item() if ref64.numel() else 1.0
    return (out64 - ref64).abs().max().item() / max(scale, 1e-30) if out64.numel() else 0.0


@dataclass
class PagedBatch:
    """Inputs of paged_attention for one packed batch (see kernels/reference.py for layouts)."""

    q: torch.Tensor               # [num_tokens, num_heads, head_dim]
    k_cache: torch.Tensor         # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor
    block_tables: torch.Tensor    # [num_seqs, max_blocks_per_seq] int32
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32
    seq_lens: torch.Tensor        # [num_seqs] int32
    max_query_len: int
    max_seq_len: int

    def args(self) -> tuple[torch.Tensor, ...]:
        return (self.q, self.k_cache, self.v_cache, self.block_tables, self.query_start_loc,
                self.seq_lens)


def make_paged_batch(q_lens: list[int], seq_lens: list[int], num_heads: int, num_kv_heads: int,
                     head_dim: int, block_size: int, dtype: torch.dtype,
                     dev: torch.device | str, spare_blocks: int = 3,
                     poison_unused: bool = True, heads_major: bool = False) -> PagedBatch:
    """Random q and caches; each sequence gets its blocks in random physical order.

    Blocks owned by no sequence (and hence the padding of the block table, which points at
    random blocks) are filled with NaN when `poison_unused`. `heads_major` stores each page
    head by head (`cache.kv_cache_pages`), behind the same [blocks, block_size, heads, dim]
    view.
    """
    if len(q_lens) != len(seq_lens) or any(q > s for q, s in zip(q_lens, seq_lens, strict=True)):
        raise ValueError("need one q_len <= seq_len per sequence")
    dev = torch.device(dev)
    num_seqs = len(seq_lens)
    blocks_per_seq = [-(-s // block_size) for s in seq_lens]
    max_blocks = max([*blocks_per_seq, 1])
    num_blocks = sum(blocks_per_seq) + spare_blocks
    perm = torch.randperm(num_blocks)
    tables = torch.randint(0, num_blocks, (num_seqs, max_blocks), dtype=torch.int32)
    used = torch.zeros(num_blocks, dtype=torch.bool)
    start = 0
    for s, n in enumerate(blocks_per_seq):
        tables[s, :n] = perm[start:start + n].int()
        used[perm[start:start + n]] = True
        start += n
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache, v_cache = (kv_cache_pages(shape, dtype, dev, heads_major).copy_(
        torch.randn(shape, dtype=torch.float32, device=dev)) for _ in range(2))
    if poison_unused:
        unused = (~used).to(dev)
        k_cache[unused] = float("nan")
        v_cache[unused] = float("nan")
    num_tokens = sum(q_lens)
    q = torch.randn((num_tokens, num_heads, head_dim), dtype=torch.float32, device=dev).to(dtype)
    qsl = torch.zeros(num_seqs + 1, dtype=torch.int32)
    qsl[1:] = torch.tensor(q_lens, dtype=torch.int32).cumsum(0)
    return PagedBatch(q=q, k_cache=k_cache, v_cache=v_cache, block_tables=tables.to(dev),
                      query_start_loc=qsl.to(dev),
                      seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
                      max_query_len=max([*q_lens, 0]), max_seq_len=max([*seq_lens, 0]))


def poison_outside_window(batch: PagedBatch, q_lens: list[int], seq_lens: list[int],
                          window: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Copies of the caches with NaN in every block no query of its sequence may see, + count.

    A kernel that skips blocks wholly outside the sliding window still matches the reference
    (computed on the clean caches); one that reads them returns NaN.
    """
    k_cache, v_cache = batch.k_cache.clone(), batch.v_cache.clone()
    block_size = k_cache.shape[1]
    tables = batch.block_tables.cpu()
    num_poisoned = 0
    for s, (q_len, seq_len) in enumerate(zip(q_lens, seq_lens, strict=True)):
        if q_len == 0:
            continue
        first_visible = max(0, seq_len - q_len - window + 1)  # the first query's window start
        for b in range(first_visible // block_size):
            k_cache[int(tables[s, b])] = float("nan")
            v_cache[int(tables[s, b])] = float("nan")
            num_poisoned += 1
    return k_cache, v_cache, num_poisoned


@dataclass
class Launch:
    """One `kernel[grid](*args, **kwargs)` call, recorded instead of run."""

    kernel: Any  # triton JITFunction, or the interpreter's InterpretedFunction
    args: tuple
    kwargs: dict  # constexprs and launch options

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__

    @property
    def options(self) -> dict:
        return {k: v for k, v in self.kwargs.items()
                if k in ("num_warps", "num_stages", "launch_pdl")}

    @functools.cached_property
    def specialization(self) -> list[tuple]:
        """Triton's own specialisation of this call's arguments, one (type, attribute) per
        parameter: ("i32", "D") is an int divisible by 16, ("*bf16", "D") a 16-byte aligned
        pointer, ("constexpr", v) a compile-time constant. Kernels differing here are
        different compilations. Uses Triton's launch binder (runtime/jit.py internals of the
        pinned 3.6: revisit on an upgrade; test_triton_compile.py then fails loudly)."""
        from triton.backends.compiler import BaseBackend
        from triton.runtime.jit import JITFunction, create_function_from_signature

        fn = self.kernel
        if not isinstance(fn, JITFunction):  # interpreter: rebuild the JIT's view of it
            fn = JITFunction(fn.fn, **{k: v for k, v in fn.kwargs.items()
                                       if k.startswith("do_not_specialize")})
        binder = create_function_from_signature(fn.signature, fn.params, BaseBackend)
        _, spec, _ = binder(*self.args, **self.kwargs)
        return [tuple(s) for s in spec]

    def compile_key(self) -> tuple:
        return (self.name, tuple(map(repr, self.specialization)),
                tuple(sorted(self.options.items())))


@contextlib.contextmanager
def recorded_launches(*kernels: tuple[ModuleType, str]) -> Iterator[list[Launch]]:
    """While active, each (module, kernel attribute) records its launches instead of running
    them: the wrappers' argument checks and launch choices run, the kernels do not."""
    launches: list[Launch] = []

    class _Recorder:
        def __init__(self, kernel: Any) -> None:
            self.kernel = kernel

        def __getitem__(self, grid: Any):
            def launch(*args: Any, **kwargs: Any) -> None:
                launches.append(Launch(self.kernel, args, kwargs))
            return launch

    originals = [(module, attr, getattr(module, attr)) for module, attr in kernels]
    try:
        for module, attr, kernel in originals:
            setattr(module, attr, _Recorder(kernel))
        yield launches
    finally:
        for module, attr, kernel in originals:
            setattr(module, attr, kernel)
