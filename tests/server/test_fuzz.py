"""Schema fuzzing (hypothesis, bounded): no request body, however odd, gets a 5xx.

Bodies are drawn field by field from the request models' own field names — mixing plausible
values with junk of every JSON type — plus unknown keys and raw bytes. Every response must be
a success with the endpoint's shape or a 4xx with the OpenAI error body.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localserve.server.app import create_app
from localserve.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from localserve.settings import Settings
from tests.server.fake_engine import FakeEngine

junk = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=12)
# Mostly in range, so that many bodies get past validation and reach the engine.
small_int = st.integers(min_value=0, max_value=12) | st.integers(min_value=-3, max_value=60)
unit = st.floats(min_value=0.05, max_value=1.0) | st.floats(min_value=-0.5, max_value=2.5)
token_ids = st.lists(st.integers(min_value=-2, max_value=300), max_size=8)
text_part = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]),
                                   "text": st.text(max_size=10)})
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", "developer", "bot"])},
    optional={"content": st.text(max_size=20) | st.lists(text_part, max_size=3),
              "name": st.text(max_size=5), "tool_call_id": st.text(max_size=5)})

PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from(["fake-model", "fake-model", "other"]),
    "prompt": st.text(max_size=30) | st.lists(st.text(max_size=8), max_size=3) | token_ids
    | st.lists(token_ids, max_size=3),
    "messages": st.lists(message, min_size=1, max_size=4),
    "max_tokens": small_int, "max_completion_tokens": small_int, "n": small_int,
    "temperature": unit, "top_p": unit, "top_k": small_int, "min_p": unit,
    "presence_penalty": unit, "frequency_penalty": unit, "repetition_penalty": unit,
    "logprobs": small_int | st.booleans(), "top_logprobs": small_int,
    "logit_bias": st.dictionaries(st.sampled_from(["5", "-1", "x", "999"]), unit, max_size=2),
    "seed": small_int, "stop": st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=3),
    "stop_token_ids": token_ids, "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "echo": st.booleans(), "priority": small_int, "min_tokens": small_int,
    "tokens": token_ids, "add_special_tokens": st.booleans(),
    "add_generation_prompt": st.booleans(), "ignore_eos": st.booleans(),
    "skip_special_tokens": st.booleans(), "user": st.text(max_size=8),
    "best_of": st.none() | small_int, "suffix": st.none() | st.text(max_size=3),
    "tools": st.none() | st.just([]), "tool_choice": st.sampled_from([None, "none", "auto"]),
    "response_format": st.none() | st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "json_object"])}),
}


def bodies(model: type) -> st.SearchStrategy[dict[str, Any]]:
    """Plausible bodies, the same with one field turned to junk, or with unknown keys added."""
    names = sorted(model.model_fields)
    fields = model.model_fields
    plausible = st.fixed_dictionaries(
        {n: PLAUSIBLE.get(n, junk) for n in names if fields[n].is_required()},
        optional={n: PLAUSIBLE.get(n, junk) for n in names if not fields[n].is_required()})
    one_junk = st.tuples(plausible, st.sampled_from(names), junk).map(
        lambda t: {**t[0], t[1]: t[2]})
    extra_keys = st.tuples(plausible, st.dictionaries(st.text(max_size=8), junk, max_size=2)).map(
        lambda t: {**t[1], **t[0]})
    return st.one_of(plausible, one_junk, extra_keys)


ENDPOINTS = [("/v1/completions", CompletionRequest), ("/v1/chat/completions",
                                                      ChatCompletionRequest),
             ("/tokenize", TokenizeRequest), ("/detokenize", DetokenizeRequest)]


@pytest.fixture(scope="module")
def fuzz_client() -> TestClient:
    engine = FakeEngine(max_model_len=48)
    return TestClient(create_app(engine, Settings()), raise_server_exceptions=False)


def check(r: Any) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code >= 400:
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
    elif r.headers["content-type"].startswith("text/event-stream"):
        assert r.text.endswith("data: [DONE]\n\n")
        assert '"error"' not in r.text, r.text[:500]


@pytest.mark.parametrize("path, model", ENDPOINTS, ids=[p for p, _ in ENDPOINTS])
def test_fuzz_request_models(fuzz_client: TestClient, path: str, model: type) -> None:
    @settings(max_examples=120, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(body=bodies(model))
    def run(body: dict[str, Any]) -> None:
        check(fuzz_client.post(path, content=json.dumps(body),
                               headers={"content-type": "application/json"}))

    run()


@settings(max_examples=60, deadline=None, database=None)
@given(raw=st.binary(max_size=200), path=st.sampled_from([p for p, _ in ENDPOINTS]),
       ctype=st.sampled_from(["application/json", "text/plain", "", "application/x+json"]))
def test_fuzz_raw_bodies(fuzz_client: TestClient, raw: bytes, path: str, ctype: str) -> None:
    headers = {"content-type": ctype} if ctype else {}
    check(fuzz_client.post(path, content=raw, headers=headers))
