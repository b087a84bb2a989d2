"""Sampler: each parameter's effect, checked exactly or statistically; seeds are batch-invariant."""

from __future__ import annotations

import math

import pytest
import torch

from localserve.runner.sampler import Sampler, SampleRequest
from localserve.sampling_params import SamplingParams

V = 8


def req(prompt=(), out=(), choice=0, **kw) -> SampleRequest:
    return SampleRequest(SamplingParams(**kw), list(prompt), list(out), choice)


def draw(logits, requests, sampler=None):
    sampler = sampler or Sampler(V, frozenset({7}))
    return sampler(logits, requests)


def test_greedy_is_argmax():
    logits = torch.randn(4, V)
    out = draw(logits, [req(temperature=0)] * 4)
    assert [s.token_id for s in out] == logits.argmax(-1).tolist()


def test_logprobs_come_from_raw_logits():
    logits = torch.randn(1, V)
    # Penalties and temperature change the choice but not the reported logprobs.
    (s,) = draw(logits, [req(temperature=0, logprobs=3, logit_bias={0: 100.0})])
    raw = torch.log_softmax(logits[0], -1)
    assert s.token_id == 0
    assert s.logprob == pytest.approx(raw[0].item(), abs=1e-6)
    top = raw.topk(3)
    assert [t for t, _ in s.top_logprobs] == top.indices.tolist()
    assert [lp for _, lp in s.top_logprobs] == pytest.approx(top.values.tolist(), abs=1e-6)


def test_logit_bias_min_tokens_and_stop_ids():
    logits = torch.zeros(1, V)
    logits[0, 7] = 10.0  # EOS is the favourite
    (s,) = draw(logits, [req(temperature=0, min_tokens=2, out=[3])])
    assert s.token_id != 7
    (s,) = draw(logits, [req(temperature=0, min_tokens=2, out=[3, 4])])
    assert s.token_id == 7
    logits[0, 5] = 9.0
    (s,) = draw(logits, [req(temperature=0, min_tokens=1, stop_token_ids=(5,), ignore_eos=True)])
    assert s.token_id == 7  # ignore_eos: EOS is not banned; stop id 5 is
    (s,) = draw(logits, [req(temperature=0, logit_bias={2: 50.0})])
    assert s.token_id == 2


def test_repetition_presence_frequency_penalties_exact():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5, 0, 0, 0, 0]])
    sampler = Sampler(V)
    r = req(prompt=[0], out=[1, 2, 2], repetition_penalty=2.0, presence_penalty=0.5,
            frequency_penalty=0.25)
    processed = sampler._process(logits.clone(), [r])[0]
    expected = logits[0].clone()
    expected[0] = 2.0 / 2  # positive logit divided
    expected[1] = -2.0 * 2 - 0.5 - 0.25  # negative multiplied, then 1 occurrence
    expected[2] = 1.0 / 2 - 0.5 - 0.5  # two occurrences
    assert torch.allclose(processed, expected)


def test_top_k_top_p_min_p_truncate():
    probs = torch.tensor([0.4, 0.3, 0.2, 0.1, 0, 0, 0, 0])
    logits = torch.log(probs.clamp_min(1e-12)).unsqueeze(0).repeat(400, 1)
    for kw, allowed in [({"top_k": 2}, {0, 1}), ({"top_p": 0.6}, {0, 1}),
                        ({"top_p": 0.35}, {0}), ({"min_p": 0.6}, {0, 1})]:
        out = draw(logits, [req(temperature=1.0, seed=i, **kw) for i in range(400)])
        seen = {s.token_id for s in out}
        assert seen == allowed, (kw, seen)


def test_temperature_sampling_matches_distribution():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2] + [1e-9] * 5)).unsqueeze(0).repeat(3000, 1)
    out = draw(logits, [req(temperature=1.0, seed=i) for i in range(3000)])
    counts = torch.bincount(torch.tensor([s.token_id for s in out]), minlength=V).float() / 3000
    # 3000 draws: each frequency within ~4.5 standard errors.
    for p, f in zip([0.5, 0.3, 0.2], counts[:3].tolist(), strict=True):
        assert abs(p - f) < 4.5 * math.sqrt(p * (1 - p) / 3000)
    # Low temperature sharpens towards the mode.
    cold = draw(logits[:500], [req(temperature=0.1, seed=i) for i in range(500)])
    assert sum(s.token_id == 0 for s in cold) > 490


def test_seeded_sampling_is_batch_invariant():
    torch.manual_seed(0)
    logits = torch.randn(6, V)
    alone = [draw(logits[i:i + 1], [req(temperature=1.0, seed=11, out=[1] * i)])[0].token_id
             for i in range(6)]
    mixed_requests = [req(temperature=1.0, seed=11, out=[1] * i) for i in range(6)]
    # Interleave unrelated unseeded rows to shift the batch around the seeded ones.
    batch = torch.cat([logits, torch.randn(3, V)])
    together = draw(batch, [*mixed_requests, *[req(temperature=1.0)] * 3])
    assert [s.token_id for s in together[:6]] == alone


def test_different_seeds_and_choices_differ():
    logits = torch.zeros(64, V)
    a = [s.token_id for s in draw(logits, [req(temperature=1.0, seed=1, out=[0] * i)
                                           for i in range(64)])]
    b = [s.token_id for s in draw(logits, [req(temperature=1.0, seed=1, choice=1, out=[0] * i)
                                           for i in range(64)])]
    assert a != b


def test_greedy_ties_pick_the_first_maximum_like_torch():
    logits = torch.zeros(3, V)
    logits[0, [5, 6]] = 2.0          # a tie: the first index wins
    logits[1, V - 1] = 1.0
    logits[2, [3, 4]] = float("inf")
    out = draw(logits, [req(temperature=0)] * 3)
    assert [s.token_id for s in out] == logits.argmax(-1).tolist() == [5, V - 1, 3]
