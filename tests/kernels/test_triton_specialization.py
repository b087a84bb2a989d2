"""A serving step's changing batch never makes Triton compile a new kernel variant.

Triton compiles one variant per specialisation of the runtime arguments: an int that is 1 or
a multiple of 16, a pointer that is 16-byte aligned or not. The batch's sequence count, its
widest block table, the split-KV factor, the decode gemv's row count and the alignment of the
views into the runner's packed index buffer (positions, slots) and the sampler's staged copy
(seeds, temperatures) all change from step to step, so each new combination would
stall serving for a compilation (a second or more for attention). The kernels opt those
arguments out; here the wrappers' launches are recorded (not run) over such batches, and
Triton's own specialisation of each launch must be the same wherever the constexpr launch
choices (tile sizes, split-KV on or off) are the same.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch

pytest.importorskip("triton")

from localserve.kernels import reference
from localserve.kernels.triton import attention, cache, gemv, rope_cache, sampling
from localserve.kernels.triton.testing import (
    Launch,
    device,
    make_paged_batch,
    recorded_launches,
)

DEV = device()  # the launches are only recorded, but the wrappers check the device


def _variants_per_choice(launches: list[Launch]) -> dict[tuple, set[tuple]]:
    """Compile keys grouped by each launch's choices (its constexprs and options: the
    keyword arguments)."""
    groups: dict[tuple, set[tuple]] = defaultdict(set)
    for launch in launches:
        groups[(launch.name, tuple(sorted(launch.kwargs.items())))].add(launch.compile_key())
    return groups


def _assert_one_variant_each(launches: list[Launch], expected_kernels: set[str]) -> None:
    assert {launch.name for launch in launches} == expected_kernels
    groups = _variants_per_choice(launches)
    many = {name: len(keys) for (name, _), keys in groups.items() if len(keys) > 1}
    assert not many, f"kernels compiled more than once for one launch choice: {many}"


def test_attention_batch_shape_adds_no_variant():
    kernels = [(attention, "paged_attention_kernel"), (attention, "reduce_splits_kernel")]
    with recorded_launches(*kernels) as launches:
        # Decode steps of 1..33 sequences whose longest table has 1..17 blocks, with and
        # without split-KV (9 and 16 splits share one reduction tile), and prefill chunks.
        for num_seqs in (1, 2, 16, 17, 33):
            for ctx in (5, 17, 16 * 16, 16 * 17):
                b = make_paged_batch([1] * num_seqs, [ctx] * num_seqs, 8, 2, 64, 16,
                                     torch.float16, DEV, poison_unused=False)
                for splits in (1, 9, 16):
                    attention.paged_attention(*b.args(), 0.125, max_query_len=1,
                                              max_seq_len=ctx, num_kv_splits=splits)
        for q_lens in ([100], [100, 60, 1], [64] * 16):
            b = make_paged_batch(q_lens, [q + 32 for q in q_lens], 8, 2, 64, 16,
                                 torch.float16, DEV, poison_unused=False)
            attention.paged_attention(*b.args(), 0.125, max_query_len=max(q_lens),
                                      max_seq_len=max(q_lens) + 32)
    _assert_one_variant_each(launches, {"paged_attention_kernel", "reduce_splits_kernel"})


def _packed_index_views(num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """positions and slots as the runner passes them: int64 views of one buffer at offsets of
    one and two token counts, so the positions' alignment follows the token count."""
    spare = torch.zeros(3 * num_tokens + 1, dtype=torch.int64, device=DEV)
    first = spare.data_ptr() // 8 % 2  # the buffer starts 16-byte aligned, as on the GPU
    buf = spare[first:first + 3 * num_tokens]
    positions, slots = buf[num_tokens:2 * num_tokens], buf[2 * num_tokens:]
    positions.copy_(torch.arange(num_tokens, device=DEV))
    slots.copy_(torch.arange(num_tokens, device=DEV))
    return positions, slots


def test_cache_writes_ignore_index_alignment():
    kernels = [(rope_cache, "_rope_cache_kernel"), (cache, "_write_kv_kernel")]
    cos_sin = reference.rope_cos_sin(32, 64, 10000.0).to(DEV)
    k_cache = torch.zeros(8, 16, 2, 32, device=DEV)
    with recorded_launches(*kernels) as launches:
        for num_tokens in (1, 2, 3, 16, 17):
            positions, slots = _packed_index_views(num_tokens)
            assert (positions.data_ptr() % 16 == 0) == (num_tokens % 2 == 0)
            q = torch.randn(num_tokens, 4, 32, device=DEV)
            kv = torch.randn(num_tokens, 2, 32, device=DEV)
            rope_cache.rope_and_cache(positions, q, kv, kv, cos_sin, k_cache, k_cache.clone(),
                                      slots)
            cache.write_kv(kv, kv, k_cache, k_cache.clone(), slots)
    _assert_one_variant_each(launches, {"_rope_cache_kernel", "_write_kv_kernel"})


def test_fused_sampling_ignores_staged_views_alignment_and_chunking():
    """The sampler stages seeds then temperatures in one int64 buffer: the temperatures'
    view is 16-byte aligned or not by the row count. The number of chunks a row is split
    into (75 for one row of a Qwen3 vocabulary, 1 for a thousand rows) is not specialised."""
    chunks = set()
    with recorded_launches((sampling, "_gumbel_argmax_kernel"),
                           (sampling, "_pick_first_max_kernel")) as launches:
        for rows in (1, 2, 3, 16, 17, 1100):
            staged = torch.zeros(rows + (rows + 1) // 2, dtype=torch.int64, device=DEV)
            temps = staged[rows:].view(torch.float32)[:rows]
            logits = torch.empty(rows, 151936, dtype=torch.bfloat16, device=DEV)
            sampling.gumbel_argmax(logits, temps, staged[:rows])
            chunks.add(sampling._chunking(rows, 151936, logits.device)[1])
    assert 1 in chunks and max(chunks) >= 64
    _assert_one_variant_each(launches, {"_gumbel_argmax_kernel", "_pick_first_max_kernel"})


def test_gemv_batch_rows_add_no_variant():
    """Decode batches of 1 to 8 rows share one gemv variant per weight shape."""
    weight = torch.randn(48, 64, device=DEV)
    with recorded_launches((gemv, "_gemv_kernel")) as launches:
        for rows in range(1, 9):
            gemv.gemv(torch.randn(rows, 64, device=DEV), weight)
    _assert_one_variant_each(launches, {"_gemv_kernel"})
