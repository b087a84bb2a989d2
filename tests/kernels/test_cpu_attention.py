"""C CPU paged attention and write_kv vs kernels/reference.py.

Scenarios: several sequences packed together, chunked prefill on a cached prefix, decode,
GQA and MQA, sliding window, soft cap, fp16/bf16/fp32 KV, head_dim 64 and 256, shuffled
(non-contiguous) block tables. Math is fp32 in both; tolerance 2e-5 absolute+relative on
outputs of unit scale (a wrong mask, scale or softmax moves outputs by >1e-2).
"""

from __future__ import annotations

import pytest
import torch

from localserve.kernels import cpu, reference

pytestmark = pytest.mark.cpu


def make_batch(cached: list[int], new: list[int], num_heads: int, num_kv_heads: int,
               head_dim: int, dtype: torch.dtype, block_size: int = 16, seed: int = 0):
    """Caches holding every sequence's first `cached` tokens, plus the `new` tokens' q/k/v."""
    g = torch.Generator().manual_seed(seed)
    lens = [c + n for c, n in zip(cached, new, strict=True)]
    max_blocks = max((n + block_size - 1) // block_size for n in lens) + 1
    num_blocks = len(lens) * max_blocks + 3
    perm = torch.randperm(num_blocks, generator=g).to(torch.int32)  # scattered blocks
    block_tables = perm[:len(lens) * max_blocks].reshape(len(lens), max_blocks)
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=g).to(dtype)
    v_cache = torch.randn(shape, generator=g).to(dtype)
    num_tokens = sum(new)
    q = torch.randn(num_tokens, num_heads, head_dim, generator=g)
    k = torch.randn(num_tokens, num_kv_heads, head_dim, generator=g)
    v = torch.randn(num_tokens, num_kv_heads, head_dim, generator=g)
    slots = []
    for s, (c, n) in enumerate(zip(cached, new, strict=True)):
        for p in range(c, c + n):
            slots.append(int(block_tables[s, p // block_size]) * block_size + p % block_size)
    qsl = torch.tensor([0, *torch.tensor(new).cumsum(0).tolist()], dtype=torch.int32)
    return dict(q=q, k=k, v=v, k_cache=k_cache, v_cache=v_cache, block_tables=block_tables,
                query_start_loc=qsl, seq_lens=torch.tensor(lens, dtype=torch.int32),
                slot_mapping=torch.tensor(slots, dtype=torch.int64))


def run_both(b: dict, scale: float, window: int | None, soft_cap: float | None):
    kc, vc = b["k_cache"].clone(), b["v_cache"].clone()
    cpu.write_kv(b["k"], b["v"], kc, vc, b["slot_mapping"])
    rk, rv = b["k_cache"].clone(), b["v_cache"].clone()
    reference.write_kv(b["k"], b["v"], rk, rv, b["slot_mapping"])
    assert torch.equal(kc, rk) and torch.equal(vc, rv), "write_kv must match bit for bit"
    args = (b["block_tables"], b["query_start_loc"], b["seq_lens"], scale)
    got = cpu.paged_attention(b["q"], kc, vc, *args, sliding_window=window, soft_cap=soft_cap)
    want = reference.paged_attention(b["q"], rk, rv, *args, sliding_window=window,
                                     soft_cap=soft_cap)
    torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize(("num_heads", "num_kv_heads", "head_dim"),
                         [(4, 4, 64), (8, 2, 64), (4, 1, 256)], ids=["mha", "gqa", "mqa256"])
def test_mixed_prefill_and_decode(isa, dtype, num_heads, num_kv_heads, head_dim):
    # seq 0: fresh prefill; seq 1: chunked prefill on a 37-token cached prefix;
    # seqs 2-3: decode steps (one new token) after 50 and 5 cached tokens.
    b = make_batch([0, 37, 50, 5], [21, 19, 1, 1], num_heads, num_kv_heads, head_dim, dtype)
    run_both(b, head_dim ** -0.5, None, None)


@pytest.mark.parametrize(("window", "soft_cap"), [(8, None), (20, 30.0), (None, 5.0)])
def test_sliding_window_and_soft_cap(isa, window, soft_cap):
    b = make_batch([40, 0, 70], [25, 33, 1], 4, 1, 256, torch.float16, seed=1)
    run_both(b, 1.0 / 16, window, soft_cap)


def test_long_decode_block_size_32(isa):
    b = make_batch([300, 129], [1, 1], 8, 1, 64, torch.float32, block_size=32, seed=2)
    run_both(b, 0.125, None, None)


def test_empty_sequence_and_negative_slots():
    b = make_batch([10, 4], [3, 2], 2, 1, 64, torch.float32, seed=3)
    b["query_start_loc"] = torch.tensor([0, 0, 2], dtype=torch.int32)  # seq 0: nothing new
    b["q"] = b["q"][:2]
    b["seq_lens"] = torch.tensor([10, 6], dtype=torch.int32)
    b["k"], b["v"] = b["k"][:2], b["v"][:2]
    b["slot_mapping"] = torch.tensor([-1, int(b["slot_mapping"][4])])  # first write skipped
    run_both(b, 0.125, None, None)


def test_rejects_bad_input():
    b = make_batch([4], [2], 2, 1, 64, torch.float32)
    bad = b["block_tables"].clone()
    bad[0, 0] = 10_000
    with pytest.raises(ValueError, match="out of range"):
        cpu.paged_attention(b["q"], b["k_cache"], b["v_cache"], bad, b["query_start_loc"],
                            b["seq_lens"], 0.1)
    with pytest.raises(ValueError, match="slot"):
        cpu.write_kv(b["k"], b["v"], b["k_cache"], b["v_cache"], torch.tensor([0, 10**9]))
    with pytest.raises(ValueError, match="num_heads"):
        cpu.paged_attention(torch.randn(2, 3, 64), b["k_cache"].expand(-1, -1, 2, -1).contiguous(),
                            b["v_cache"].expand(-1, -1, 2, -1).contiguous(), b["block_tables"],
                            b["query_start_loc"], b["seq_lens"], 0.1)
