"""The paged KV cache's bookkeeping: blocks, block tables, prefix caching, copy-on-write.

Pure Python and backend-neutral: it hands out block ids; the runner owns the memory.
- A block holds `block_size` tokens' KV. Sequences own blocks through ref counts.
- Automatic prefix caching: a full block is named by a chain hash of its tokens and of
  every token before it, so equal prefixes map to equal blocks. A block whose ref count drops
  to zero keeps its hash and stays findable until it is reused (least recently freed first).
- Forks (n>1) share every block; the first write into a shared block copies it first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence as Seq
from dataclasses import dataclass

from localserve.engine.sequence import Sequence


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None  # set once the block is full and registered in the prefix cache


def block_hash(prev: int, tokens: Seq[int]) -> int:
    """A full block's name: its tokens chained to the hash of the block before (0 first)."""
    return hash((prev, tuple(tokens)))


def chain_hashes(token_ids: Seq[int], block_size: int, num_blocks: int) -> list[int]:
    """Hash of each of the first `num_blocks` full blocks, each chained to its predecessor."""
    hashes: list[int] = []
    prev = 0
    for i in range(num_blocks):
        prev = block_hash(prev, token_ids[i * block_size:(i + 1) * block_size])
        hashes.append(prev)
    return hashes


class BlockManager:
    """Owns the free list, the prefix-cache index and every sequence's block table."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Free blocks in eviction order: the least recently freed first.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._cached: dict[int, int] = {}  # chain hash -> block id
        self._chains: dict[int, list[int]] = {}  # seq_id -> chain hashes of its full blocks

    # -- queries ---------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def match_prefix(self, seq: Sequence) -> tuple[list[int], list[int]]:
        """Cached blocks holding a prefix of `seq` (at least one token is left to compute),
        and their chain hashes."""
        if not self.enable_prefix_caching:
            return [], []
        max_blocks = (seq.num_tokens - 1) // self.block_size
        hits: list[int] = []
        hashes = chain_hashes(seq.token_ids(0, max_blocks * self.block_size), self.block_size,
                              max_blocks)
        for h in hashes:
            block_id = self._cached.get(h)
            if block_id is None:
                break
            hits.append(block_id)
        return hits, hashes[:len(hits)]

    # -- allocation ------------------------------------------------------------------------
    def allocate(self, seq: Sequence, num_new_tokens: int) -> int | None:
        """Admits a waiting sequence: takes its prefix-cache hits plus blocks for new tokens.

        Returns how many tokens to compute now (`num_new_tokens` capped by what is left of the
        sequence after the hits), or None (nothing taken) if the blocks are not there.
        """
        assert not seq.block_table, "allocate() is for sequences without blocks"
        hits, hashes = self.match_prefix(seq)
        num_cached = len(hits) * self.block_size
        num_new = min(num_new_tokens, seq.num_tokens - num_cached)
        num_fresh = self.blocks_needed(num_cached + num_new) - len(hits)
        # A hit that sits in the free list leaves it, so it costs a free block too.
        num_free_hits = sum(1 for b in hits if self.blocks[b].ref_count == 0)
        if num_fresh + num_free_hits > self.num_free_blocks:
            return None
        for block_id in hits:
            self._take(block_id)
        seq.block_table = hits + [self._take_fresh() for _ in range(num_fresh)]
        seq.num_computed = num_cached
        self._chains[seq.seq_id] = hashes
        return num_new

    def append_slots(self, seq: Sequence, num_new_tokens: int) -> list[tuple[int, int]] | None:
        """Makes room for `num_new_tokens` more tokens of a running sequence.

        Returns the copy-on-write copies (src, dst) the runner must do first, or None
        (nothing changed) if the free blocks do not suffice.
        """
        table = seq.block_table
        first_block = seq.num_computed // self.block_size
        shared = first_block < len(table) and self.blocks[table[first_block]].ref_count > 1
        num_fresh = self.blocks_needed(seq.num_computed + num_new_tokens) - len(table)
        if num_fresh <= 0 and not shared:
            return []  # most decode steps: the token fits the sequence's own last block
        if max(num_fresh, 0) + shared > self.num_free_blocks:
            return None
        copies = []
        if shared:  # copy-on-write: the block we are about to write into has other readers
            src = seq.block_table[first_block]
            dst = self._take_fresh()
            self.blocks[src].ref_count -= 1
            seq.block_table[first_block] = dst
            copies.append((src, dst))
        seq.block_table.extend(self._take_fresh() for _ in range(num_fresh))
        return copies

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """The child shares all of the parent's blocks."""
        child.block_table = list(parent.block_table)
        for block_id in child.block_table:
            self.blocks[block_id].ref_count += 1
        self._chains[child.seq_id] = list(self._chains.get(parent.seq_id, ()))

    def free(self, seq: Sequence) -> None:
        """Releases the sequence's blocks; cached ones stay findable until reused."""
        # Tail blocks first, so that they are evicted before the prefix blocks they extend.
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block_id] = None
        seq.block_table = []
        self._chains.pop(seq.seq_id, None)

    def commit(self, seq: Sequence) -> None:
        """Registers the sequence's newly full, computed blocks in the prefix cache."""
        if not self.enable_prefix_caching:
            return
        chain = self._chains.setdefault(seq.seq_id, [])
        bs = self.block_size
        # Only the blocks filled since the last commit are hashed: O(1) per token overall.
        for i in range(len(chain), seq.num_computed // bs):
            h = block_hash(chain[-1] if chain else 0, seq.token_ids(i * bs, (i + 1) * bs))
            chain.append(h)
            block = self.blocks[seq.block_table[i]]
            if block.hash is None and h not in self._cached:
                block.hash = h
                self._cached[h] = block.block_id

    def reset_prefix_cache(self) -> None:
        for block in self.blocks:
            if block.hash is not None and block.ref_count == 0:
                del self._cached[block.hash]
                block.hash = None

    # -- internals -------------------------------------------------------------------------
    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self._free[block_id]
        block.ref_count += 1

    def _take_fresh(self) -> int:
        block_id, _ = self._free.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None:  # evict it from the prefix cache
            del self._cached[block.hash]
            block.hash = None
        block.ref_count = 1
        return block_id

    def check_integrity(self, live: Seq[Sequence] | None = None) -> None:
        """Raises AssertionError unless free + used == total, the prefix-cache index matches
        the blocks, and (given all `live` sequences) ref counts equal their references."""
        refs = [0] * self.num_blocks
        for seq in live or ():
            for block_id in seq.block_table:
                refs[block_id] += 1
        for b in self.blocks:
            is_free = b.block_id in self._free
            if b.ref_count < 0 or (b.ref_count == 0) != is_free:
                raise AssertionError(f"block {b.block_id}: ref {b.ref_count}, free={is_free}")
            if live is not None and refs[b.block_id] != b.ref_count:
                raise AssertionError(f"block {b.block_id}: ref {b.ref_count} but "
                                     f"{refs[b.block_id]} references")
            if b.hash is not None and self._cached.get(b.hash) != b.block_id:
                raise AssertionError(f"block {b.block_id}: hash not indexed")
        if len(self._cached) != sum(b.hash is not None for b in self.blocks):
            raise AssertionError("prefix-cache index holds blocks without hashes")
        if self.num_free_blocks + sum(b.ref_count > 0 for b in self.blocks) != self.num_blocks:
            raise AssertionError("free + used != total")
