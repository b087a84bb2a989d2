"""CUDA graphs for whole forward passes: one graph per size bucket, captured at start-up.

A step has a fixed shape once it is padded to a bucket, so the forward pass replays as one
graph with no per-kernel launch cost. Inputs are copied into static buffers; padded tokens
write no KV (slot -1) and their output is dropped. Attention is launched for `max_model_len`
keys so one capture serves every context length: the kernel skips the key tiles past each
sequence's real length. Every graph is timed once after capture, and a step runs in a larger
bucket's graph when that one measured faster.

Two kinds share this machinery (`StepGraphs`) and one memory pool:
- `DecodeGraphs`: every sequence runs one token; one bucket per batch size.
- `PrefillGraphs`: steps with prompt tokens (a prefill, a prefill chunk beside decode rows, a
  prompt whose prefix was cached) of up to `MAX_PREFILL_GRAPH_TOKENS` tokens and
  `MAX_PREFILL_GRAPH_SEQS` sequences; one bucket per token count. Eager, such a step is
  bound by its kernel launches: on an H200 (session 14, docs/benchmarks.md) the 8B's
  512-token prompt took 25.7 ms eager and 12.1 ms in a graph, and a 16-token step behind a
  cached prefix 27.8 ms against 6.1 (H100, session 17: 25.6 against 12.3, and 18.4 against
  7.5). On by default (runner.PREFILL_GRAPHS): about 2 s of the 8B's cold start.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time

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

# Prefill steps of up to this many tokens run in graphs (more pay a small share for launches).
MAX_PREFILL_GRAPH_TOKENS = 512
# The smallest prefill bucket: fewer tokens cost what 32 do (the GEMMs read every weight once).
# Not 16: its steps are decode-like for attention (MAX_DECODE_QUERY_LEN), a split-KV variant
# compiled for that graph alone (2.2 s of a cold start, H100) and replayed slower than the
# 32-token graph (fastest_cover routed 16 -> 32 on an H100 and an H200, session 14).
MIN_PREFILL_GRAPH_TOKENS = 32
# Sequence slots of a prefill graph at most. Each unused slot still launches one attention
# program per KV head, which binary-searches the slots before it returns: with 512 slots a
# one-prompt step of the 8B (8 KV heads) would launch 511 x 8 such programs a layer (not
# timed). Steps of more sequences launch eagerly.
MAX_PREFILL_GRAPH_SEQS = 64

# Batches up to this many rows pad to a power of two: their step reads every weight once
# whatever the batch, so padding them is nearly free.
MEMORY_BOUND_ROWS = 64
# Above it, this many buckets per doubling (at most 1/8 of a step padding): the GEMMs of
# hundreds of rows are compute-bound, and padding 300 sequences to 512 pays for 512.
BUCKETS_PER_DOUBLING = 8
# Prefill buckets per doubling above MEMORY_BOUND_ROWS tokens. Each graph costs start-up
# (H200, session 14: the 8B's cold start read 22.2 s with 27 prefill graphs, 8 per doubling,
# and 15.2 s without, in two calls on one machine), and a padded token costs little beside
# launching eagerly (H200, 8B replays: 128 tokens 5.2 ms, 256 7.2, 512 10.3; eager, the
# 512-token prompt took 25.7 ms).
PREFILL_BUCKETS_PER_DOUBLING = 2

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


def bucket_sizes(max_num_seqs: int, per_doubling: int = BUCKETS_PER_DOUBLING) -> list[int]:
    """The batch sizes that get a graph (powers of two, then `per_doubling` buckets per
    doubling above MEMORY_BOUND_ROWS); a batch runs in the smallest that holds it."""
    sizes = []
    size = 1
    while size < max_num_seqs:
        sizes.append(size)
        if size < MEMORY_BOUND_ROWS:
            size *= 2
        else:
            size += (1 << (size.bit_length() - 1)) // per_doubling
    return [*sizes, max_num_seqs]


def prefill_token_buckets(max_tokens: int) -> list[int]:
    """The token counts of prefill steps that get a graph: `bucket_sizes` from
    MIN_PREFILL_GRAPH_TOKENS, with PREFILL_BUCKETS_PER_DOUBLING."""
    top = min(max_tokens, MAX_PREFILL_GRAPH_TOKENS)
    return [b for b in bucket_sizes(top, PREFILL_BUCKETS_PER_DOUBLING)
            if b >= min(top, MIN_PREFILL_GRAPH_TOKENS)]


@functools.cache
def warm_up_stream(device: int) -> torch.cuda.Stream:
    """The one side stream on which every capture's warm-up runs. cuBLAS keeps a workspace
    for each stream it has run on (32 MiB on Hopper) until the process ends: when each capture
    made its own stream, an H100 held 33 of them after start-up, 1,056 MiB (session 18)."""
    return torch.cuda.Stream(device)


class StepGraphs:
    """One CUDA graph per bucket of a step's size, with the static buffers they read."""

    kind = ""  # "decode" or "prefill", for the log

    def __init__(self, model: torch.nn.Module, kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
                 ops: AttentionOps, buckets: list[int], max_tokens: int, max_seqs: int,
                 max_blocks_per_seq: int, max_model_len: int, hidden_size: int,
                 dtype: torch.dtype, device: torch.device, pool=None):
        self.model = model
        self.kv_caches = kv_caches
        self.ops = ops
        self.buckets = buckets
        self.max_model_len = max_model_len
        i64, i32 = torch.int64, torch.int32
        self.input_ids = torch.zeros(max_tokens, dtype=i64, device=device)
        self.positions = torch.zeros(max_tokens, dtype=i64, device=device)
        self.slot_mapping = torch.full((max_tokens,), -1, dtype=i64, device=device)
        self.block_tables = torch.zeros((max_seqs, max_blocks_per_seq), dtype=i32, device=device)
        self.query_start_loc = torch.arange(max_seqs + 1, dtype=i32, device=device)
        self.seq_lens = torch.ones(max_seqs, dtype=i32, device=device)
        self.hidden = torch.zeros((max_tokens, hidden_size), dtype=dtype, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.route = {b: b for b in self.buckets}  # bucket -> the bucket whose graph runs it
        self.replay_times: dict[int, float] = {}  # bucket -> seconds a replay, at capture
        self.pool = pool  # shared with the graphs captured before (replays never overlap)

    # -- what a kind defines ------------------------------------------------------------------
    def _meta(self, b: int) -> AttentionMetadata:
        """The metadata bucket b's graph reads (views of the static buffers); b tokens."""
        raise NotImplementedError

    def _stage_sequences(self, b: int, num_tokens: int, meta: AttentionMetadata) -> None:
        """Copies the step's per-sequence metadata; fills bucket b's other sequences."""
        raise NotImplementedError

    def _launches(self, b: int) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def moved(self) -> dict[int, int]:
        """The buckets whose steps run in a larger bucket's graph (`fastest_cover`)."""
        return {b: r for b, r in self.route.items() if r != b}

    # -- capture ------------------------------------------------------------------------------
    def capture_all(self) -> None:
        """Captures every bucket, largest first (the later ones fit in the memory pool it
        leaves), so no capture stalls a request in the middle of serving. Called once,
        before the first `run`."""
        start = time.perf_counter()
        for b in reversed(self.buckets):
            self.graphs[b] = self._capture(b)
        self.replay_times = self._replay_times()
        self.route = fastest_cover(self.replay_times)
        moved = self.moved()
        log.info("captured %d %s graphs (%d..%d) in %.1fs%s", len(self.graphs), self.kind,
                 self.buckets[0], self.buckets[-1], time.perf_counter() - start,
                 f"; steps of buckets {moved} run in larger, faster ones" if moved else "")

    def _replay_times(self, rounds: int = 3) -> dict[int, float]:
        """Seconds per replay of each graph (the best of `rounds`), as captured: short
        contexts, so the times differ by what depends on the step's size (the GEMMs)."""
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

    def _forward(self, b: int) -> None:
        """Bucket b's forward pass on the static buffers, as its graph records it."""
        ctx = ForwardContext(self._meta(b), self.kv_caches, self.ops)
        with forward_context(ctx), self._launches(b):
            self.hidden[:b].copy_(self.model(self.input_ids[:b], self.positions[:b]))

    def forward_every_bucket(self) -> None:
        """Each bucket's forward pass, in capture order: `compile_ahead`'s dry pass."""
        for b in reversed(self.buckets):
            self._forward(b)

    def _capture(self, b: int) -> torch.cuda.CUDAGraph:
        start = time.perf_counter()
        stream = warm_up_stream(torch.cuda.current_device())
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._forward(b)  # warm-up: Triton compiles and autotunes outside the capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            self._forward(b)
        self.pool = graph.pool()
        log.debug("captured a %s graph for %d in %.2fs", self.kind, b,
                  time.perf_counter() - start)
        return graph

    def run(self, b: int, input_ids: torch.Tensor, positions: torch.Tensor,
            meta: AttentionMetadata) -> torch.Tensor:
        """One step in bucket b's graph (`bucket_for`); returns hidden [num_tokens, hidden].
        The tokens past the step's write no KV."""
        n = input_ids.shape[0]
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.slot_mapping[:n].copy_(meta.slot_mapping)
        self.slot_mapping[n:].fill_(-1)
        tables = meta.block_tables
        self.block_tables[:tables.shape[0], :tables.shape[1]].copy_(tables)
        self._stage_sequences(b, n, meta)
        self.graphs[b].replay()
        return self.hidden[:n]


class DecodeGraphs(StepGraphs):
    """Decode steps, one graph per batch size; PDL for the small ones (`decode_launches`)."""

    kind = "decode"

    def __init__(self, model: torch.nn.Module, kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
                 ops: AttentionOps, max_num_seqs: int, max_blocks_per_seq: int,
                 max_model_len: int, hidden_size: int, dtype: torch.dtype,
                 device: torch.device, pool=None):
        super().__init__(model, kv_caches, ops, bucket_sizes(max_num_seqs), max_num_seqs,
                         max_num_seqs, max_blocks_per_seq, max_model_len, hidden_size, dtype,
                         device, pool)

    def _meta(self, b: int) -> AttentionMetadata:
        return AttentionMetadata(self.slot_mapping[:b], self.block_tables[:b],
                                 self.query_start_loc[:b + 1], self.seq_lens[:b], 1,
                                 self.max_model_len)

    def _stage_sequences(self, b: int, num_tokens: int, meta: AttentionMetadata) -> None:
        # One token a sequence: query_start_loc stays 0, 1, 2, ... as captured.
        self.seq_lens[:num_tokens].copy_(meta.seq_lens)
        self.seq_lens[num_tokens:b].fill_(1)

    def _launches(self, b: int) -> contextlib.AbstractContextManager[None]:
        return decode_launches(b)

    def bucket_for(self, batch: int) -> int | None:
        """The bucket whose graph runs a batch: the smallest that holds it, or a larger one
        that measured faster (`fastest_cover`)."""
        b = next((b for b in self.buckets if b >= batch), None)
        return None if b is None else self.route[b]


class PrefillGraphs(StepGraphs):
    """Steps with prompt tokens, one graph per token count. Bucket b has b sequence slots (at
    most MAX_PREFILL_GRAPH_SEQS); a step's sequences fill the first ones, the rest get no
    tokens (the attention kernel returns at once for them), and the padded tokens belong to
    no sequence."""

    kind = "prefill"

    def __init__(self, model: torch.nn.Module, kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
                 ops: AttentionOps, max_num_batched_tokens: int, max_num_seqs: int,
                 max_blocks_per_seq: int, max_model_len: int, hidden_size: int,
                 dtype: torch.dtype, device: torch.device, pool=None):
        buckets = prefill_token_buckets(max_num_batched_tokens)
        self.max_num_seqs = max_num_seqs
        super().__init__(model, kv_caches, ops, buckets, buckets[-1],
                         self._slots(buckets[-1]), max_blocks_per_seq, max_model_len,
                         hidden_size, dtype, device, pool)

    def _slots(self, b: int) -> int:
        return min(b, self.max_num_seqs, MAX_PREFILL_GRAPH_SEQS)

    def _meta(self, b: int) -> AttentionMetadata:
        s = self._slots(b)
        # The tiles for b query tokens serve any step of at most b (the kernel reads the real
        # lengths); max_seq_len only steers split-KV for the smallest bucket.
        return AttentionMetadata(self.slot_mapping[:b], self.block_tables[:s],
                                 self.query_start_loc[:s + 1], self.seq_lens[:s], b,
                                 self.max_model_len)

    def bucket_for(self, num_tokens: int, num_seqs: int) -> int | None:
        """The bucket whose graph runs a step, or None (too many tokens or sequences)."""
        b = next((b for b in self.buckets if b >= num_tokens), None)
        if b is None:
            return None
        b = self.route[b]
        return b if num_seqs <= self._slots(b) else None

    def _stage_sequences(self, b: int, num_tokens: int, meta: AttentionMetadata) -> None:
        num_seqs, s = meta.seq_lens.shape[0], self._slots(b)
        self.query_start_loc[:num_seqs + 1].copy_(meta.query_start_loc)
        # Empty sequences after the last: they start (and end) past the step's tokens.
        self.query_start_loc[num_seqs + 1:s + 1].fill_(num_tokens)
        self.seq_lens[:num_seqs].copy_(meta.seq_lens)
        self.seq_lens[num_seqs:s].fill_(0)
