"""Invalid SamplingParams raise ValueError naming the field."""

from __future__ import annotations

import pytest

from localserve.sampling_params import InvalidSamplingParam, SamplingParams


@pytest.mark.parametrize("field,value", [
    ("max_tokens", -1), ("max_tokens", 0), ("top_p", 0.0), ("top_p", 1.5), ("temperature", -0.1),
    ("temperature", float("nan")), ("n", 0), ("top_k", -2), ("min_p", 1.5),
    ("presence_penalty", 3.0), ("frequency_penalty", -2.5), ("repetition_penalty", 0.0),
    ("logprobs", 21), ("min_tokens", -1), ("stop", [""]), ("stop_token_ids", [-1]),
])
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(InvalidSamplingParam, match=field) as raised:
        SamplingParams(**{field: value})
    assert raised.value.param == field


def test_min_tokens_above_max_tokens():
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingParams(max_tokens=2, min_tokens=3)


def test_bad_logit_bias():
    with pytest.raises(ValueError, match="logit_bias"):
        SamplingParams(logit_bias={-1: 1.0})
    with pytest.raises(ValueError, match="logit_bias"):
        SamplingParams(logit_bias={1: 500.0})


def test_normalisation():
    p = SamplingParams(stop="x", top_k=-1, temperature=0)
    assert p.stop == ("x",) and p.top_k == 0 and p.greedy
