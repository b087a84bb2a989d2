"""Decode-graph batch buckets: every batch up to max_num_seqs has one, with bounded padding,
and runs in a larger bucket only when that one measured faster."""

from __future__ import annotations

import pytest
import torch

from localserve.backends.cuda.graphs import (
    BUCKETS_PER_DOUBLING,
    MEMORY_BOUND_ROWS,
    PDL_ROWS,
    bucket_sizes,
    decode_launches,
    fastest_cover,
)


@pytest.mark.parametrize("max_num_seqs", [1, 2, 8, 63, 64, 65, 256, 500, 1024])
def test_every_batch_has_a_bucket_with_bounded_padding(max_num_seqs):
    buckets = bucket_sizes(max_num_seqs)
    assert buckets == sorted(set(buckets)) and buckets[-1] == max_num_seqs
    for batch in range(1, max_num_seqs + 1):
        bucket = next(b for b in buckets if b >= batch)
        if batch > MEMORY_BOUND_ROWS:  # compute-bound GEMMs: padding costs its share
            assert (bucket - batch) / batch < 1 / BUCKETS_PER_DOUBLING
        else:
            assert bucket < 2 * batch


def test_small_batches_pad_to_powers_of_two():
    assert bucket_sizes(64) == [1, 2, 4, 8, 16, 32, 64]
    assert bucket_sizes(160) == [1, 2, 4, 8, 16, 32, 64, 72, 80, 88, 96, 104, 112, 120, 128,
                                 144, 160]
    assert len(bucket_sizes(1024)) == 39  # captured at start-up: each costs a forward pass


def test_a_batch_moves_to_a_larger_bucket_only_when_it_measured_faster():
    # H100, Llama-3-8B shapes: cuBLAS picks a slow gate/up kernel at 448 rows.
    times = {256: 8.0, 288: 9.5, 320: 9.1, 448: 15.3, 480: 11.5, 512: 11.5}
    route = fastest_cover(times)
    assert route == {256: 256, 288: 320, 320: 320, 448: 480, 480: 480, 512: 512}
    # Within the noise margin a batch stays in its own bucket; never moves down.
    assert fastest_cover({8: 1.0, 16: 0.99, 32: 0.5}, min_gain=0.03) == {8: 32, 16: 32, 32: 32}
    assert fastest_cover({8: 1.0, 16: 0.98}, min_gain=0.03) == {8: 8, 16: 16}
    assert fastest_cover({8: 0.5, 16: 1.0}) == {8: 8, 16: 16}


@pytest.mark.parametrize("capable", [True, False])
def test_only_graphs_of_a_few_rows_launch_with_pdl(monkeypatch, capable):
    """Decode graphs of up to PDL_ROWS rows (gemv chains) launch with PDL on sm_90+, larger
    ones (next to cuBLAS GEMMs: session 9 measured (b) and (c) 0.5% slower) plainly."""
    pytest.importorskip("triton")
    from localserve.kernels.triton import _common

    monkeypatch.setattr(_common, "interpreting", lambda: False)
    monkeypatch.setattr(_common, "_gpu_arch", lambda index: "sm_90" if capable else "sm_86")
    monkeypatch.delenv("LOCALSERVE_TRITON_PDL", raising=False)
    cuda = torch.device("cuda", 0)
    for batch in (1, PDL_ROWS, PDL_ROWS + 1, 256):
        with decode_launches(batch):
            assert _common.pdl_launch(cuda)["USE_PDL"] == (capable and batch <= PDL_ROWS)
    monkeypatch.setenv("LOCALSERVE_TRITON_PDL", "0")
    with decode_launches(1):
        assert not _common.pdl_launch(cuda)["USE_PDL"]
