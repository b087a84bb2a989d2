"""gumbel_argmax (Triton): greedy rows equal torch.argmax; sampled rows follow softmax(l / T).

Interpreter (CPU) at small vocabularies without a GPU, model-sized ones on a GPU. The
distribution check draws many rows with the same logits and different seeds and compares the
empirical frequencies with kernels/reference.py's sampling_probs (total variation bound set
by the number of draws); determinism and batch invariance are checked exactly.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from localserve.kernels import reference
from localserve.kernels.triton import gumbel_argmax, sampling
from localserve.kernels.triton._common import poisoned_outputs
from localserve.kernels.triton.testing import device, fresh_seed, full_shapes

FULL = full_shapes()
DEV = device()
VOCABS = [151936, 128256, 5000] if FULL else [50, 1100, 2100]
DTYPES = [torch.bfloat16, torch.float32] if FULL else [torch.float32, torch.float16]


@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_greedy_rows_are_the_first_argmax(vocab, dtype):
    g = torch.Generator().manual_seed(fresh_seed())
    logits = (torch.randn(6, vocab + 3, generator=g) * 4).to(dtype)
    logits[0, 7] = logits[0, vocab - 1] = 1e4  # a tie: the first index wins
    logits = logits.to(DEV)
    with poisoned_outputs():
        got = gumbel_argmax(logits, torch.zeros(6, device=DEV),
                            torch.arange(6, device=DEV), vocab=vocab)
    assert got.tolist() == logits[:, :vocab].float().argmax(-1).tolist()
    assert got[0].item() == 7


@pytest.mark.parametrize("temp", [0.6, 1.0, 1.7])
def test_sampled_rows_follow_softmax(temp):
    vocab, draws = 24, 6000 if FULL else 1500
    g = torch.Generator().manual_seed(fresh_seed())
    row = torch.randn(vocab, generator=g) * 2
    logits = row.expand(draws, vocab).contiguous().to(DEV)
    seeds = torch.randperm(2**20, generator=g)[:draws].to(DEV)
    got = gumbel_argmax(logits, torch.full((draws,), temp, device=DEV), seeds).cpu()
    freq = torch.bincount(got, minlength=vocab).double() / draws
    want = reference.sampling_probs(row[None], torch.tensor([temp]))[0]
    # Total variation of an empirical distribution: ~sqrt(vocab / draws) / 2 at most.
    tv = 0.5 * (freq - want).abs().sum().item()
    assert tv < 0.6 * (vocab / draws) ** 0.5, (tv, freq, want)


def test_same_seed_same_token_in_any_batch():
    vocab = VOCABS[1]
    g = torch.Generator().manual_seed(fresh_seed())
    logits = torch.randn(8, vocab, generator=g).to(DEV)
    temps = torch.full((8,), 0.9, device=DEV)
    seeds = torch.arange(100, 108, device=DEV)
    whole = gumbel_argmax(logits, temps, seeds)
    again = gumbel_argmax(logits, temps, seeds)
    alone = torch.cat([gumbel_argmax(logits[i:i + 1], temps[i:i + 1], seeds[i:i + 1])
                       for i in range(8)])
    assert whole.tolist() == again.tolist() == alone.tolist()
    other = gumbel_argmax(logits, temps, seeds + 1000)
    assert other.tolist() != whole.tolist()  # 8 rows over a large vocabulary


@pytest.mark.parametrize("rows", [1, 5])
def test_chunked_rows_draw_the_same_tokens_as_whole_rows(rows, monkeypatch):
    """Rows split over several programs (few rows) and whole rows (PROGRAMS_PER_SM = 0: one
    chunk a row) pick the same tokens, sampled and greedy: the noise is keyed by the index."""
    vocab = VOCABS[0] if FULL else VOCABS[-1]  # the interpreter: 3 chunks of 1,024
    g = torch.Generator().manual_seed(fresh_seed())
    logits = (torch.randn(rows, vocab, generator=g) * 3).to(DEV)
    logits[0, 3] = logits[0, vocab - 2] = 1e4  # a tie across chunks: the first index wins
    temps = torch.tensor([0.0, 0.8, 1.3, 0.0, 2.0][:rows], device=DEV)
    seeds = torch.arange(7, 7 + rows, device=DEV)
    assert sampling._chunking(rows, vocab, logits.device)[1] > 1
    with poisoned_outputs():
        chunked = gumbel_argmax(logits, temps, seeds)
    monkeypatch.setattr(sampling, "PROGRAMS_PER_SM", 0)
    assert sampling._chunking(rows, vocab, logits.device)[1] == 1
    whole = gumbel_argmax(logits, temps, seeds)
    assert chunked.tolist() == whole.tolist()
    assert chunked[0].item() == 3


@pytest.mark.parametrize("rows", [1, 3, 100, 1024])
@pytest.mark.parametrize("vocab", [1, 1023, 1025, 128256, 262144])
def test_chunks_cover_the_vocabulary_in_whole_blocks(rows, vocab):
    chunk_size, num_chunks = sampling._chunking(rows, vocab, torch.device("cpu"))
    assert chunk_size % sampling.BLOCK == 0 and 1 <= num_chunks <= sampling.MAX_CHUNKS
    assert (num_chunks - 1) * chunk_size < vocab <= num_chunks * chunk_size


def test_wrapper_rejects_bad_input():
    logits = torch.zeros(2, 10, device=DEV)
    with pytest.raises(ValueError, match="one entry per row"):
        gumbel_argmax(logits, torch.zeros(3, device=DEV), torch.zeros(2, dtype=torch.int64,
                                                                      device=DEV))
    with pytest.raises(TypeError, match="seeds"):
        gumbel_argmax(logits, torch.zeros(2, device=DEV), torch.zeros(2, device=DEV))
    with pytest.raises(ValueError, match="vocab"):
        gumbel_argmax(logits, torch.zeros(2, device=DEV),
                      torch.zeros(2, dtype=torch.int64, device=DEV), vocab=11)


def test_sampler_uses_the_kernel_and_keeps_its_contract():
    """The Sampler with the kernel: greedy = argmax, seeded rows batch-invariant, bias and
    penalties applied first, top-p rows (which the kernel cannot cut) on the torch path."""
    from localserve.runner.sampler import Sampler, SampleRequest
    from localserve.sampling_params import SamplingParams

    vocab = 300
    sampler = Sampler(vocab, draw_kernel=gumbel_argmax)
    g = torch.Generator().manual_seed(fresh_seed())
    logits = torch.randn(4, vocab + 20, generator=g).to(DEV)

    def req(**kw):
        return SampleRequest(SamplingParams(**kw), (1, 2), (3,), 0)

    greedy = sampler(logits, [req(temperature=0)] * 4)
    assert [s.token_id for s in greedy] == logits[:, :vocab].argmax(-1).tolist()
    seeded = [req(temperature=0.8, seed=s) for s in (1, 2, 3, 4)]
    whole = [s.token_id for s in sampler(logits, seeded)]
    alone = [sampler(logits[i:i + 1], [seeded[i]])[0].token_id for i in range(4)]
    assert whole == alone
    biased = sampler(logits, [req(temperature=0, logit_bias={17: 100.0})] * 4)
    assert [s.token_id for s in biased] == [17] * 4
    calls = []
    sampler.draw_kernel = lambda *a: calls.append(a) or gumbel_argmax(*a)
    top_p = sampler(logits, [req(temperature=1.0, top_p=0.01)] * 4)
    assert not calls  # top-p: the torch path
    assert [s.token_id for s in top_p] == logits[:, :vocab].argmax(-1).tolist()
    sampler(logits, [req(temperature=1.0)] * 4)
    assert len(calls) == 1
