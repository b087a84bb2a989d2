"""Decode-graph batch buckets: every batch up to max_num_seqs has one, with bounded padding."""

from __future__ import annotations

import pytest

from localserve.backends.cuda.graphs import (
    BUCKETS_PER_DOUBLING,
    MEMORY_BOUND_ROWS,
    bucket_sizes,
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
