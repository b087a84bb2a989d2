"""CUDA graphs for decode steps: one graph per batch-size bucket, captured at start-up.

A decode step (every sequence runs one token) has a fixed shape once the batch is padded to a
bucket, so the whole forward pass replays as one graph with no per-kernel launch cost. Inputs
are copied into static buffers; padded rows write no KV (slot -1) and their output is dropped.
Attention is launched for `max_model_len` keys so one capture serves every context length:
the kernel skips the key tiles past each sequence's real length. Every graph is timed once
after capture, and a batch runs in a larger bucket's graph when that one measured faster.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import torch

from localserve.backends.cuda.linear import MAX_GEMV_ROWS
from localserve.runner.context import (
    AttentionMetadata,
    AttentionOps,
    ForwardContext,
    forward_context,
)

log = logging.getLogger(__name__)


# Graphs of up to this many rows launch their Triton kernels with programmatic dependent launch
# where the GPU has it: their steps are chains of short memory-bound kernels (the linear layers
# are gemvs), whose launch gaps PDL overlaps.
PDL_ROWS = MAX_GEMV_ROWS

# Batches up to this many rows pad to a power of two: their step reads every weight once
# whatever the batch, so padding them is nearly free.
MEMORY_BOUND_ROWS = 64
# Above it, this many buckets per doubling (at most 1/8 of a step padding): the GEMMs of
# hundreds of rows are compute-bound, and padding 300 sequences to 512 pays for 512.
BUCKETS_PER_DOUBLING = 8


# A batch moves up to a larger bucket only when that graph replays this much faster: below
# it, timing noise would decide.
MIN_ROUTE_GAIN = 0.03


def fastest_cover(times: dict[int, float], min_gain: float = MIN_ROUTE_GAIN) -> dict[int, int]:
    """For each bucket, the bucket whose graph runs its batches: the fastest of it and the
    larger ones, when that one is at least `min_gain` faster. cuBLAS picks a kernel per shape,
    and some shapes get a poor one (H100, Llama-3-8B gate/up: 295 us at 448 rows, 175 us at
    480; benchmarks/gemm_shapes.py), so a padded batch can run faster than an exact one."""
    route = {}
    for b in sorted(times):
        best = min((c for c in times if c >= b), key=lambda c: (times[c], c))
        route[b] = best if times[best] < (1 - min_gain) * times[b] else b
    return route


def decode_launches(batch: int) -> contextlib.AbstractContextManager[None]:
    """How a decode graph of `batch` rows launches its Triton kernels (see PDL_ROWS)."""
    from localserve.kernels.triton._common import pdl_where_supported  # needs triton

    return pdl_where_supported() if batch <= PDL_ROWS else contextlib.nullcontext()


def bucket_sizes(max_num_seqs: int) -> list[int]:
    """The decode batch sizes that get a graph; a batch runs in the smallest that holds it."""
    sizes = []
    size = 1
    while size < max_num_seqs:
        sizes.append(size)
        if size < MEMORY_BOUND_ROWS:
            size *= 2
        else:
            size += (1 << (size.bit_length() - 1)) // BUCKETS_PER_DOUBLING
    return [*sizes, max_num_seqs]


class DecodeGraphs:
    def __init__(self, model: torch.nn.Module, kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
                 ops: AttentionOps, max_num_seqs: int, max_blocks_per_seq: int,
                 max_model_len: int, hidden_size: int, dtype: torch.dtype,
                 device: torch.device):
        self.model = model
        self.kv_caches = kv_caches
        self.ops = ops
        self.buckets = bucket_sizes(max_num_seqs)
        self.max_model_len = max_model_len
        n = self.buckets[-1]
        i64, i32 = torch.int64, torch.int32
        self.input_ids = torch.zeros(n, dtype=i64, device=device)
        self.positions = torch.zeros(n, dtype=i64, device=device)
        self.slot_mapping = torch.full((n,), -1, dtype=i64, device=device)
        self.block_tables = torch.zeros((n, max_blocks_per_seq), dtype=i32, device=device)
        self.query_start_loc = torch.arange(n + 1, dtype=i32, device=device)
        self.seq_lens = torch.ones(n, dtype=i32, device=device)
        self.hidden = torch.zeros((n, hidden_size), dtype=dtype, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.route = {b: b for b in self.buckets}  # bucket -> the bucket whose graph runs it
        self.replay_times: dict[int, float] = {}  # bucket -> seconds a replay, at capture
        self.pool = None

    def capture_all(self) -> None:
        """Captures every bucket, largest first (the later ones fit in the memory pool it
        leaves), so no capture stalls a request in the middle of serving. Called once,
        before the first `run`."""
        start = time.perf_counter()
        for b in reversed(self.buckets):
            self.graphs[b] = self._capture(b)
        self.replay_times = self._replay_times()
        self.route = fastest_cover(self.replay_times)
        moved = {b: r for b, r in self.route.items() if r != b}
        log.info("captured %d decode graphs (batches %d..%d) in %.1fs%s", len(self.graphs),
                 self.buckets[0], self.buckets[-1], time.perf_counter() - start,
                 f"; batches of buckets {moved} run in larger, faster ones" if moved else "")

    def _replay_times(self, rounds: int = 3) -> dict[int, float]:
        """Seconds per replay of each graph (the best of `rounds`), as captured: one-key
        contexts, so the times differ by what depends on the batch size (the GEMMs)."""
        times = {b: float("inf") for b in self.graphs}
        marks = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                 for _ in self.graphs]
        for _ in range(rounds):
            for (begin, end), graph in zip(marks, self.graphs.values(), strict=True):
                begin.record()
                graph.replay()
                end.record()
            torch.cuda.synchronize()
            for (begin, end), b in zip(marks, self.graphs, strict=True):
                times[b] = min(times[b], begin.elapsed_time(end) / 1e3)
        return times

    def bucket_for(self, batch: int) -> int | None:
        """The bucket whose graph runs a batch: the smallest that holds it, or a larger one
        that measured faster (`fastest_cover`)."""
        b = next((b for b in self.buckets if b >= batch), None)
        return None if b is None else self.route[b]

    def _meta(self, b: int) -> AttentionMetadata:
        return AttentionMetadata(self.slot_mapping[:b], self.block_tables[:b],
                                 self.query_start_loc[:b + 1], self.seq_lens[:b], 1,
                                 self.max_model_len)

    def _capture(self, b: int) -> torch.cuda.CUDAGraph:
        start = time.perf_counter()
        ctx = ForwardContext(self._meta(b), self.kv_caches, self.ops)
        run: Callable[[], None] = lambda: self.hidden[:b].copy_(
            self.model(self.input_ids[:b], self.positions[:b]))
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), forward_context(ctx), decode_launches(b):
            run()  # warm-up: Triton compiles and autotunes outside the capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool), forward_context(ctx), decode_launches(b):
            run()
        self.pool = graph.pool()
        log.debug("captured a decode graph for batch %d in %.2fs", b,
                  time.perf_counter() - start)
        return graph

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, slot_mapping: torch.Tensor,
            block_tables: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
        """One decode step for `len(input_ids)` sequences; returns hidden [batch, hidden]."""
        batch = input_ids.shape[0]
        b = self.bucket_for(batch)
        assert b is not None
        self.input_ids[:batch].copy_(input_ids)
        self.positions[:batch].copy_(positions)
        self.slot_mapping[:batch].copy_(slot_mapping)
        self.slot_mapping[batch:b].fill_(-1)
        self.block_tables[:batch, :block_tables.shape[1]].copy_(block_tables)
        self.seq_lens[:batch].copy_(seq_lens)
        self.seq_lens[batch:b].fill_(1)
        self.graphs[b].replay()
        return self.hidden[:batch]
