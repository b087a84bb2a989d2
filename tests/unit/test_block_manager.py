"""Block manager: allocation, prefix caching with LRU reuse, copy-on-write forks, integrity."""

from __future__ import annotations

import pytest

from localserve.engine.block_manager import BlockManager
from localserve.engine.sequence import Sequence
from localserve.sampling_params import SamplingParams


def seq(tokens: list[int]) -> Sequence:
    return Sequence("r", list(tokens), SamplingParams())


def run(bm: BlockManager, s: Sequence, num_new: int) -> None:
    """Pretend the step computed `num_new` tokens."""
    s.num_computed += num_new
    bm.commit(s)


def test_allocate_free_and_integrity():
    bm = BlockManager(8, 4)
    a = seq(list(range(10)))
    assert bm.allocate(a, 100) == 10
    assert len(a.block_table) == 3 and bm.num_free_blocks == 5
    bm.check_integrity([a])
    bm.free(a)
    assert bm.num_free_blocks == 8 and a.block_table == []
    bm.check_integrity([])


def test_allocate_chunk_takes_only_blocks_for_the_chunk():
    bm = BlockManager(8, 4)
    a = seq(list(range(20)))
    assert bm.allocate(a, 6) == 6
    assert len(a.block_table) == 2
    run(bm, a, 6)
    assert bm.append_slots(a, 14) == []
    assert len(a.block_table) == 5


def test_allocate_refuses_without_taking_anything():
    bm = BlockManager(2, 4)
    a = seq(list(range(12)))
    assert bm.allocate(a, 12) is None
    assert a.block_table == [] and bm.num_free_blocks == 2


def test_prefix_hit_leaves_at_least_one_token_to_compute():
    bm = BlockManager(16, 4)
    a = seq(list(range(8)))
    bm.allocate(a, 8)
    run(bm, a, 8)
    b = seq(list(range(8)))  # the same 8 tokens: both blocks cached, but one token must run
    assert bm.allocate(b, 100) == 4
    assert b.num_computed == 4 and b.block_table[0] == a.block_table[0]
    assert b.block_table[1] != a.block_table[1]
    c = seq([*range(8), 99])
    assert bm.allocate(c, 100) == 1 and c.block_table[:2] == a.block_table
    bm.check_integrity([a, b, c])


def test_freed_cached_blocks_are_found_then_evicted_lru():
    bm = BlockManager(4, 2)
    a = seq([1, 2, 3, 4, 5])
    bm.allocate(a, 5)
    run(bm, a, 5)
    cached = list(a.block_table[:2])
    bm.free(a)
    b = seq([1, 2, 3, 4, 9])
    assert bm.allocate(b, 5) == 1 and b.block_table[:2] == cached
    bm.free(b)
    # A new unrelated sequence needs all 4 blocks: the cached ones get evicted.
    c = seq([7] * 8)
    assert bm.allocate(c, 8) == 8
    bm.check_integrity([c])
    bm.free(c)
    d = seq([1, 2, 3, 4, 5])
    assert bm.allocate(d, 5) == 5  # no hit left
    bm.check_integrity([d])


def test_fork_shares_blocks_and_copies_on_write():
    bm = BlockManager(8, 4)
    parent = seq([1, 2, 3, 4, 5, 6])
    bm.allocate(parent, 6)
    run(bm, parent, 6)
    child = parent.fork(1, 42)
    parent.output_token_ids.append(41)
    bm.fork(parent, child)
    bm.check_integrity([parent, child])
    assert bm.blocks[parent.block_table[1]].ref_count == 2
    # The child writes its token into the shared, half-full block 1: it must copy first.
    copies = bm.append_slots(child, 1)
    assert copies == [(parent.block_table[1], child.block_table[1])]
    assert child.block_table[0] == parent.block_table[0]
    # The parent is now the only owner of its block: no copy.
    assert bm.append_slots(parent, 1) == []
    bm.check_integrity([parent, child])
    bm.free(child)
    bm.free(parent)
    bm.check_integrity([])


def test_prefix_caching_off_never_hits():
    bm = BlockManager(8, 2, enable_prefix_caching=False)
    a = seq([1, 2, 3, 4, 5])
    bm.allocate(a, 5)
    run(bm, a, 5)
    b = seq([1, 2, 3, 4, 5])
    assert bm.allocate(b, 5) == 5


def test_integrity_catches_a_leak():
    bm = BlockManager(4, 2)
    a = seq([1, 2, 3])
    bm.allocate(a, 3)
    a.block_table.pop()  # lose a reference
    with pytest.raises(AssertionError):
        bm.check_integrity([a])
