"""Prefill graphs (backends/cuda/graphs.py: PrefillGraphs) leave the real tokens' outputs as an
eager step computes them.

A step is staged into a bucket's static buffers: its sequences fill the first slots, the
other slots get no tokens, the padded tokens belong to no sequence and write no KV (the
caches start NaN-filled, so a read of an unwritten slot would show). The bucket's forward
pass then runs with metadata fixed at capture (attention tiles for the bucket's token count,
`max_model_len` keys). On the CPU the "replay" runs that forward pass eagerly, with the
reference attention and with the Triton kernels in the interpreter; with a GPU the graphs are
captured and replayed for real. Tolerance: fp32 on both sides, max |graph - eager| <= 1e-5 *
max |eager| (the Triton tiles differ, so the sums' order does).
"""

from __future__ import annotations

import pytest
import torch

from localserve.backends.cuda.graphs import (
    MAX_PREFILL_GRAPH_SEQS,
    MAX_PREFILL_GRAPH_TOKENS,
    PrefillGraphs,
    prefill_token_buckets,
)
from localserve.config import ModelConfig
from localserve.loader import load_model
from localserve.runner.context import ForwardContext, ReferenceAttentionOps, forward_context
from tests.helpers.paged import Chunk, PagedDriver
from tests.helpers.tiny_models import VOCAB, make_tiny_checkpoint

CUDA = torch.cuda.is_available()
REL_TOL = 1e-5
MAX_SEQS = 4  # the 16-token bucket then has an empty slot beside the step's three sequences


class EagerReplay:
    """Stands in for a captured graph on the CPU: the bucket's forward pass, run now."""

    def __init__(self, graphs: PrefillGraphs, b: int) -> None:
        self.graphs, self.b = graphs, b

    def replay(self) -> None:
        g, b = self.graphs, self.b
        with forward_context(ForwardContext(g._meta(b), g.kv_caches, g.ops)):
            g.hidden[:b].copy_(g.model(g.input_ids[:b], g.positions[:b]))


def ids(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (n,), generator=g).tolist()


@pytest.fixture(scope="module", params=["llama", "gemma3_text"])
def tiny(request, tmp_path_factory):
    ckpt = make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), request.param, "safetensors")
    device = torch.device("cuda" if CUDA else "cpu")
    return load_model(ModelConfig(model=str(ckpt.path)), device, torch.float32)


def attention_ops(kind: str):
    if kind == "reference":
        return ReferenceAttentionOps()
    from localserve.backends.cuda.ops import triton_attention_ops

    return triton_attention_ops()


@pytest.mark.parametrize("ops_kind", ["reference", "triton"])
@pytest.mark.parametrize("new_prompt", [2, 30], ids=["32-token bucket", "64-token bucket"])
@torch.inference_mode()
def test_padded_step_matches_the_eager_step(tiny, ops_kind, new_prompt):
    if CUDA and ops_kind == "reference":
        pytest.skip("the reference attention syncs with the host: it cannot be captured")
    device = torch.device("cuda" if CUDA else "cpu")
    eager, graphed = (PagedDriver(tiny.model, tiny.arch, num_blocks=48, block_size=4,
                                  device=device, ops=attention_ops(ops_kind)) for _ in "eg")
    graphs = PrefillGraphs(tiny.model, graphed.kv_caches, graphed.ops,
                           max_num_batched_tokens=64, max_num_seqs=MAX_SEQS,
                           max_blocks_per_seq=12, max_model_len=48,
                           hidden_size=tiny.arch.hidden_size, dtype=torch.float32,
                           device=device)
    if CUDA:
        graphs.capture_all()
    else:
        graphs.graphs = {b: EagerReplay(graphs, b) for b in graphs.buckets}
    # Sequence A has 11 tokens cached (past gemma's window of 8) and runs 6 more; B is a new
    # prompt; C decodes one token after a 6-token prompt. With a 2-token B both steps run in
    # the 32-token bucket and the first is longer, so the second's padded tokens hold the first
    # one's slots unless staging clears them (they must write no KV: A and C read those slots).
    # A 30-token B moves the second step to the 64-token bucket.
    a, b, c = ids(17, 1), ids(new_prompt, 2), ids(7, 3)
    ta, tb, tc = tables = [eager.alloc(n) for n in (17, new_prompt, 7)]
    assert [graphed.alloc(n) for n in (17, new_prompt, 7)] == tables  # the same blocks
    steps = [[Chunk(a[:11], 0, ta), Chunk(c[:6], 0, tc)],
             [Chunk(a[11:], 11, ta), Chunk(b, 0, tb), Chunk(c[6:], 6, tc)]]
    for step in steps:
        want = eager.hidden(step)
        input_ids, positions, meta = graphed.pack(step)
        bucket = graphs.bucket_for(len(input_ids), len(step))
        assert bucket == (32 if len(input_ids) <= 32 else 64) or CUDA  # (a GPU may route up)
        out = graphs.run(bucket, input_ids, positions, meta)
        assert out.shape == want.shape
        err = (out - want).abs().max().item()
        assert err <= REL_TOL * want.abs().max().item(), f"max err {err:.3g}"


def test_token_buckets():
    # Few graphs (start-up), at most half a bucket of padding.
    assert prefill_token_buckets(16384) == [32, 64, 96, 128, 192, 256, 384, 512]
    assert prefill_token_buckets(MAX_PREFILL_GRAPH_TOKENS)[-1] == MAX_PREFILL_GRAPH_TOKENS
    assert prefill_token_buckets(100) == [32, 64, 96, 100]
    assert prefill_token_buckets(32) == [32]
    assert prefill_token_buckets(8) == [8]  # a budget under 32 tokens: one bucket of it


def buckets_only(max_num_seqs: int) -> PrefillGraphs:
    """Prefill graphs of a 4,096-token step budget, nothing captured (no model behind)."""
    return PrefillGraphs(torch.nn.Identity(), [], ReferenceAttentionOps(),
                         max_num_batched_tokens=4096, max_num_seqs=max_num_seqs,
                         max_blocks_per_seq=4, max_model_len=64, hidden_size=8,
                         dtype=torch.float32, device=torch.device("cpu"))


def test_steps_too_large_for_a_bucket_run_eagerly():
    graphs = buckets_only(max_num_seqs=8)
    assert graphs.bucket_for(1, 1) == 32
    assert graphs.bucket_for(32, 8) == 32
    assert graphs.bucket_for(33, 2) == 64
    assert graphs.bucket_for(512, 8) == 512
    assert graphs.bucket_for(513, 1) is None  # more tokens than the largest bucket
    assert graphs.bucket_for(12, 9) is None  # more sequences than max_num_seqs slots
    many = buckets_only(max_num_seqs=1024)
    assert many.bucket_for(20, 32) == 32
    assert many.bucket_for(20, 33) is None  # bucket 32 has 32 slots
    many.route[32] = 64  # a larger graph measured faster: its slots count
    assert many.bucket_for(20, 33) == 64
    assert many.bucket_for(500, MAX_PREFILL_GRAPH_SEQS) == 512
    assert many.bucket_for(500, MAX_PREFILL_GRAPH_SEQS + 1) is None


class Recorder:
    """A graph set that records which steps reach it."""

    def __init__(self, fits) -> None:
        self.fits, self.calls = fits, []

    def bucket_for(self, *size: int) -> int | None:
        return 1 if self.fits(*size) else None

    def run(self, bucket, input_ids, *args) -> str:
        self.calls.append(len(input_ids))
        return "graph"


def test_the_runner_sends_each_step_to_its_graphs(monkeypatch):
    """Decode steps to the decode graphs, steps with prompt tokens that fit a bucket to the
    prefill graphs, the rest (and batches no graph holds) to the eager forward pass."""
    from types import SimpleNamespace

    from localserve.backends.cuda.runner import CudaModelRunner
    from localserve.config import EngineConfig
    from localserve.runner.context import AttentionMetadata
    from localserve.runner.torch_runner import TorchModelRunner

    runner = CudaModelRunner(EngineConfig(), torch.device("cpu"))
    runner.graphs = Recorder(lambda seqs: seqs <= 4)
    runner.prefill_graphs = Recorder(lambda tokens, seqs: tokens <= 16 and seqs <= 4)
    eager = []
    monkeypatch.setattr(TorchModelRunner, "_forward",
                        lambda self, s, ids, *a: eager.append(len(ids)) or "eager")
    for seqs, tokens, max_query_len, where in [(3, 3, 1, "decode"), (6, 6, 1, "eager"),
                                               (2, 9, 8, "prefill"), (5, 9, 5, "eager"),
                                               (1, 40, 40, "eager")]:
        scheduled = SimpleNamespace(seqs=[None] * seqs)
        meta = AttentionMetadata(None, None, None, None, max_query_len, 64)
        ids = torch.zeros(tokens, dtype=torch.int64)
        got = runner._forward(scheduled, ids, ids, meta)
        assert got == ("eager" if where == "eager" else "graph"), (seqs, tokens, where)
    assert runner.graphs.calls == [3]
    assert runner.prefill_graphs.calls == [9]
    assert eager == [6, 9, 40]
