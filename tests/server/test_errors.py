"""Every failure is a status plus `{"error": {message, type, param, code}}`; the server lives on."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from localserve.engine.errors import QueueFullError
from tests.server.fake_engine import FakeEngine

USER = [{"role": "user", "content": "hi"}]


def assert_error(r: Any, status: int, code: str | None = None, param: str | None = None,
                 kind: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    if code is not None:
        assert err["code"] == code
    if param is not None:
        assert err["param"] == param
    if kind is not None:
        assert err["type"] == kind
    return err


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "temperature": -1}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "top_p": 1.5}, "top_p"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "min_p": 2}, "min_p"),
    ({"prompt": "x", "presence_penalty": 5}, "presence_penalty"),
    ({"prompt": "x", "repetition_penalty": 0}, "repetition_penalty"),
    ({"prompt": "x", "logprobs": 50}, "logprobs"),
    ({"prompt": "x", "logit_bias": {"abc": 1}}, "logit_bias"),
    ({"prompt": "x", "logit_bias": {"5": 500}}, "logit_bias"),
    ({"prompt": "x", "stop": [""]}, "stop"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "n": 1000}, "n"),
    ({"prompt": "x", "max_tokens": "many"}, "max_tokens"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [[]]}, "prompt"),
    ({"prompt": [1, "a"]}, "prompt"),
    ({"prompt": [-1]}, "prompt"),
    ({"prompt": [10_000]}, "prompt"),
    ({}, "prompt"),
    ({"prompt": "x", "seed": 2**70}, "seed"),
    ({"prompt": "x", "stream_options": {"include_usage": True}}, None),
    ({"prompt": "x", "suffix": "y"}, "suffix"),
    ({"prompt": "x", "best_of": 3}, "best_of"),
    ({"prompt": "x", "echo": True, "logprobs": 1}, "echo"),
])
def test_completion_invalid_values(client: TestClient, body: dict, param: str | None) -> None:
    err = assert_error(client.post("/v1/completions", json=body), 400,
                       kind="invalid_request_error")
    if param is not None:
        assert err["param"] == param


def test_sampling_params_error_names_the_field(client: TestClient) -> None:
    err = assert_error(client.post("/v1/completions", json={"prompt": "x", "top_p": 3}), 400)
    assert "top_p" in err["message"]


@pytest.mark.parametrize("body, param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages.0.content"),
    ({"messages": USER, "top_logprobs": 2}, "top_logprobs"),
    ({"messages": USER, "logprobs": True, "top_logprobs": 30}, None),
    ({"messages": USER, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"messages": USER, "response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": USER, "temperature": "hot"}, "temperature"),
    ({"messages": USER, "top_p": 7}, "top_p"),
    ({"messages": USER, "max_tokens": 0}, "max_tokens"),
    ({"messages": USER, "max_completion_tokens": 0}, "max_completion_tokens"),
    ({"messages": "hello"}, "messages"),
])
def test_chat_invalid_values(client: TestClient, body: dict, param: str | None) -> None:
    err = assert_error(client.post("/v1/chat/completions", json=body), 400)
    if param is not None:
        assert err["param"] == param


def test_no_chat_template_is_400(make_client: Any) -> None:
    client = make_client(FakeEngine(has_chat_template=False))
    err = assert_error(client.post("/v1/chat/completions", json={"messages": USER}), 400,
                       param="messages")
    assert "chat template" in err["message"]


def test_malformed_json_and_content_type(client: TestClient) -> None:
    headers = {"content-type": "application/json"}
    assert_error(client.post("/v1/completions", content=b"{bad", headers=headers), 400,
                 code="invalid_json")
    assert_error(client.post("/v1/completions", content=b"[1, 2]", headers=headers), 400,
                 code="invalid_json")
    assert_error(client.post("/v1/completions", content=b'{"prompt": NaN}', headers=headers),
                 400, code="invalid_json")
    assert_error(client.post("/v1/completions", content=b"\xff\xfe", headers=headers), 400,
                 code="invalid_json")
    assert_error(client.post("/v1/completions", content=b"[" * 100_000, headers=headers), 400,
                 code="invalid_json")
    err = assert_error(client.post("/v1/completions", content=b'{"prompt": "x"}',
                                   headers={"content-type": "text/plain"}), 400,
                       code="invalid_content_type")
    assert "application/json" in err["message"]


def test_context_length_exceeded(client: TestClient, engine: FakeEngine) -> None:
    long_prompt = "x" * 250  # 251 tokens with BOS; max_model_len is 256
    err = assert_error(client.post("/v1/completions", json={"prompt": long_prompt,
                                                            "max_tokens": 10}),
                       400, code="context_length_exceeded", param="max_tokens")
    assert "256" in err["message"]
    # A prompt that fills the context alone names the prompt, whatever max_tokens says.
    for max_tokens in (1, None):
        err = assert_error(client.post("/v1/completions", json={
            "prompt": "x" * 300, "max_tokens": max_tokens}), 400,
            code="context_length_exceeded", param="prompt")
        assert "no room" in err["message"]
    assert_error(client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "x" * 300}], "max_tokens": 5}), 400,
        code="context_length_exceeded", param="messages")
    assert_error(client.post("/v1/chat/completions", json={
        "messages": USER, "max_completion_tokens": 1000}), 400,
        code="context_length_exceeded", param="max_completion_tokens")
    assert engine.calls == []  # rejected before reaching the engine, never truncated


def test_engine_prompt_too_long_maps_to_400(client: TestClient, engine: FakeEngine) -> None:
    from localserve.engine.errors import PromptTooLongError

    engine.fail_with = PromptTooLongError("does not fit the KV pool")
    assert_error(client.post("/v1/completions", json={"prompt": "x"}), 400,
                 code="context_length_exceeded")


def test_engine_value_error_maps_to_400(client: TestClient, engine: FakeEngine) -> None:
    engine.fail_with = ValueError("priority scheduling is off")
    err = assert_error(client.post("/v1/completions", json={"prompt": "x"}), 400)
    assert err["message"] == "priority scheduling is off"


def test_unauthorised_model_and_routes(client: TestClient) -> None:
    assert_error(client.post("/v1/completions", json={"prompt": "x", "model": "gpt-9"}), 404,
                 code="model_not_found", param="model")
    assert_error(client.post("/v1/chat/completions", json={"messages": USER, "model": "m"}),
                 404, code="model_not_found")
    assert_error(client.get("/v1/models/other"), 404, code="model_not_found")
    assert_error(client.get("/v1/nothing"), 404, kind="not_found_error")
    assert_error(client.get("/v1/completions"), 405)
    assert_error(client.delete("/v1/models"), 405)


def test_queue_full_is_429_with_retry_after(client: TestClient, engine: FakeEngine) -> None:
    engine.queue_full = True
    for path, body in (("/v1/completions", {"prompt": "x", "stream": True}),
                       ("/v1/chat/completions", {"messages": USER})):
        r = client.post(path, json=body)
        assert_error(r, 429, code="rate_limit_exceeded", kind="rate_limit_error")
        assert int(r.headers["retry-after"]) == QueueFullError.retry_after_s


def test_dead_engine_is_503(client: TestClient, engine: FakeEngine) -> None:
    engine.die()
    for path, body in (("/v1/completions", {"prompt": "x"}),
                       ("/v1/chat/completions", {"messages": USER, "stream": True})):
        assert_error(client.post(path, json=body), 503, code="engine_dead")


def test_loading_engine_is_503(client: TestClient, engine: FakeEngine) -> None:
    engine.ready = False
    r = client.post("/v1/completions", json={"prompt": "x"})
    assert_error(r, 503, code="model_loading")
    assert r.headers["retry-after"] == "1"


def test_bug_is_generic_500_and_server_stays_up(client: TestClient, engine: FakeEngine,
                                                caplog: pytest.LogCaptureFixture) -> None:
    engine.fail_with = RuntimeError("secret internal detail")
    r = client.post("/v1/completions", json={"prompt": "x"})
    err = assert_error(r, 500, code="internal_error", kind="server_error")
    assert "secret" not in err["message"]
    assert any("secret internal detail" in (rec.exc_text or str(rec.exc_info))
               for rec in caplog.records)
    engine.fail_with = None
    assert client.post("/v1/completions", json={"prompt": "x"}).status_code == 200


def test_multi_prompt_failure_aborts_the_started_ones(client: TestClient,
                                                      engine: FakeEngine) -> None:
    # The second prompt's tokens are out of range for the engine: rejected before any start.
    r = client.post("/v1/completions", json={"prompt": [[5, 6], [999]]})
    assert_error(r, 400, param="prompt")
    assert engine.calls == []
    # A too-long second prompt after the first was accepted: neither runs.
    r = client.post("/v1/completions", json={"prompt": ["a", "x" * 300], "max_tokens": 2})
    assert_error(r, 400, code="context_length_exceeded")
    assert engine.running == {}


def test_failure_of_one_started_prompt_closes_the_others(client: TestClient,
                                                         engine: FakeEngine) -> None:
    original = engine.generate
    count = {"n": 0}

    def flaky(ids: list[int], params: Any, request_id: str, priority: int = 0) -> Any:
        count["n"] += 1
        if count["n"] == 2:
            async def fail() -> Any:
                raise QueueFullError("full")
                yield  # pragma: no cover
            return fail()
        return original(ids, params, request_id, priority)

    engine.generate = flaky  # type: ignore[method-assign]
    r = client.post("/v1/completions", json={"prompt": ["a", "b", "c"], "max_tokens": 50})
    assert_error(r, 429)
    assert engine.running == {}
    assert len(engine.aborted) == 2  # the two that had started were aborted
