"""Every endpoint's happy path against the deterministic fake engine (non-streaming)."""

from __future__ import annotations

import json
import re

from fastapi.testclient import TestClient

from localserve import __version__
from tests.server.fake_engine import CORPUS, FakeEngine


def greedy_text(prompt_ids: list[int], n: int) -> str:
    start = sum(prompt_ids)
    return bytes(CORPUS[(start + i) % len(CORPUS)] for i in range(n)).decode()


def test_models(client: TestClient) -> None:
    r = client.get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    (card,) = body["data"]
    assert card["id"] == "fake-model" and card["object"] == "model"
    assert card["owned_by"] == "localserve" and card["max_model_len"] == 256
    assert isinstance(card["created"], int)
    assert client.get("/v1/models/fake-model").json()["id"] == "fake-model"


def test_health_version_stats(client: TestClient, engine: FakeEngine) -> None:
    assert client.get("/health").status_code == 200
    assert client.get("/version").json() == {"version": __version__}
    stats = client.get("/v1/localserve/stats").json()
    assert stats["model"] == "fake-model" and stats["kv_blocks_total"] == 100
    assert stats["kv_usage"] == 0.0 and stats["server_uptime_s"] >= 0
    assert set(engine.stats().to_dict()) < set(stats)


def test_health_503_while_loading_and_when_dead(client: TestClient, engine: FakeEngine) -> None:
    engine.ready = False
    r = client.get("/health")
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"
    engine.ready = True
    engine.die()
    r = client.get("/health")
    assert r.status_code == 503 and r.json()["error"]["code"] == "engine_dead"


def test_completion_text_prompt(client: TestClient, engine: FakeEngine) -> None:
    r = client.post("/v1/completions", json={"model": "fake-model", "prompt": "hello",
                                             "max_tokens": 7, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    ids = engine.tokenizer.encode("hello")
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["model"] == "fake-model"
    (choice,) = body["choices"]
    assert choice["text"] == greedy_text(ids, 7)
    assert choice["finish_reason"] == "length" and choice["index"] == 0
    assert choice["logprobs"] is None
    assert body["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 7,
                             "total_tokens": len(ids) + 7}
    prompt_ids, params, _, priority = engine.calls[-1]
    assert prompt_ids == ids and params.max_tokens == 7 and params.temperature == 0
    assert priority == 0


def test_completion_default_max_tokens_is_16(client: TestClient, engine: FakeEngine) -> None:
    r = client.post("/v1/completions", json={"prompt": "x"})
    assert r.status_code == 200
    assert engine.calls[-1][1].max_tokens == 16
    assert r.json()["usage"]["completion_tokens"] == 16


def test_completion_prompt_forms_and_choice_numbering(client: TestClient,
                                                      engine: FakeEngine) -> None:
    ids_a, ids_b = [5, 6, 7], [8, 9]
    for prompt, expected in (([5, 6, 7], [ids_a]), ([[5, 6, 7], [8, 9]], [ids_a, ids_b]),
                             (["ab", "c"], [engine.tokenizer.encode("ab"),
                                            engine.tokenizer.encode("c")])):
        engine.calls.clear()
        r = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 3, "n": 2,
                                                 "temperature": 0})
        assert r.status_code == 200, r.text
        choices = r.json()["choices"]
        assert [c["index"] for c in choices] == list(range(2 * len(expected)))
        assert [c[0] for c in engine.calls] == expected
        for i, c in enumerate(choices):
            assert c["text"] == greedy_text(expected[i // 2], 3)
        usage = r.json()["usage"]
        assert usage["prompt_tokens"] == sum(map(len, expected))
        assert usage["completion_tokens"] == 3 * 2 * len(expected)


def test_completion_sampling_fields_reach_engine(client: TestClient, engine: FakeEngine) -> None:
    r = client.post("/v1/completions", json={
        "prompt": "hi", "max_tokens": 4, "temperature": 0.5, "top_p": 0.9, "top_k": 5,
        "min_p": 0.1, "seed": 42, "presence_penalty": 0.5, "frequency_penalty": -0.5,
        "repetition_penalty": 1.1, "logit_bias": {"7": 3.5}, "stop": ["zz", "yy"],
        "priority": 3, "user": "u1", "stop_token_ids": [9], "min_tokens": 1,
        "ignore_eos": True})
    assert r.status_code == 200, r.text
    _, p, _, priority = engine.calls[-1]
    assert (p.temperature, p.top_p, p.top_k, p.min_p, p.seed) == (0.5, 0.9, 5, 0.1, 42)
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.5, -0.5, 1.1)
    assert p.logit_bias == {7: 3.5} and p.stop == ("zz", "yy") and p.stop_token_ids == (9,)
    assert p.min_tokens == 1 and p.ignore_eos and priority == 3


def test_completion_seed_is_deterministic(client: TestClient) -> None:
    def run(seed: int) -> str:
        r = client.post("/v1/completions", json={"prompt": "a", "max_tokens": 6,
                                                 "temperature": 1.0, "seed": seed})
        return r.json()["choices"][0]["text"]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_completion_stop_string(client: TestClient, engine: FakeEngine) -> None:
    ids = engine.tokenizer.encode("q")
    full = greedy_text(ids, 30)
    stop = full[5:8]
    r = client.post("/v1/completions", json={"prompt": "q", "max_tokens": 30,
                                             "temperature": 0, "stop": stop})
    choice = r.json()["choices"][0]
    assert choice["text"] == full[:full.index(stop)]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == stop


def test_completion_eos_finishes_with_stop(client: TestClient, engine: FakeEngine) -> None:
    engine.eos_after = 3
    r = client.post("/v1/completions", json={"prompt": "q", "max_tokens": 10})
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] is None
    assert r.json()["usage"]["completion_tokens"] == 4  # 3 tokens + EOS


def test_completion_echo(client: TestClient, engine: FakeEngine) -> None:
    r = client.post("/v1/completions", json={"prompt": "abc", "max_tokens": 3,
                                             "temperature": 0, "echo": True})
    text = r.json()["choices"][0]["text"]
    assert text == "abc" + greedy_text(engine.tokenizer.encode("abc"), 3)
    r = client.post("/v1/completions", json={"prompt": [[3 + ord("x")]], "max_tokens": 1,
                                             "echo": True})
    assert r.json()["choices"][0]["text"].startswith("x")


def test_completion_logprobs_shape(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 4, "logprobs": 2,
                                             "temperature": 0, "echo": False})
    lp = r.json()["choices"][0]["logprobs"]
    text = r.json()["choices"][0]["text"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert "".join(lp["tokens"]) == text
    assert len(lp["token_logprobs"]) == 4 and all(x < 0 for x in lp["token_logprobs"])
    assert all(isinstance(t, dict) and len(t) == 2 for t in lp["top_logprobs"])
    assert lp["text_offset"] == [0, 1, 2, 3]


def test_chat_basic(client: TestClient, engine: FakeEngine) -> None:
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hel"},
                                             {"type": "text", "text": "lo"}]},
                {"role": "assistant", "content": "ok"},
                {"role": "tool", "content": "42", "tool_call_id": "t1"},
                {"role": "developer", "content": "dev"}]
    r = client.post("/v1/chat/completions", json={"model": "fake-model", "messages": messages,
                                                  "max_tokens": 5, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    prompt = ("<system>be brief\n<user>hel\nlo\n<assistant>ok\n<tool>42\n<system>dev\n"
              "<assistant>")
    ids = engine.tokenizer.encode(prompt, add_special_tokens=False)
    assert engine.calls[-1][0] == ids
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": greedy_text(ids, 5)}
    assert choice["finish_reason"] == "length" and choice["logprobs"] is None
    assert body["usage"]["prompt_tokens"] == len(ids)


def test_chat_template_kwargs_reach_the_template(client: TestClient, engine: FakeEngine) -> None:
    r = client.post("/tokenize", json={"messages": [{"role": "user", "content": "a"}],
                                       "chat_template_kwargs": {"enable_thinking": False}})
    assert engine.tokenizer.decode(r.json()["tokens"]).startswith(
        "<kwargs [('enable_thinking', False)]>")
    client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "a"}],
                                              "max_tokens": 1,
                                              "chat_template_kwargs": {"x": 1}})
    assert engine.tokenizer.decode(engine.calls[-1][0]).startswith("<kwargs [('x', 1)]>")


def test_chat_max_tokens_defaults_to_the_rest_of_the_context(client: TestClient,
                                                             engine: FakeEngine) -> None:
    engine.eos_after = 2
    client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    ids, params, _, _ = engine.calls[-1]
    assert params.max_tokens == engine.max_model_len - len(ids)
    client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                              "max_tokens": 9, "max_completion_tokens": 4})
    assert engine.calls[-1][1].max_tokens == 4


def test_chat_n_and_logprobs(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "n": 3,
        "temperature": 0.8, "seed": 7, "logprobs": True, "top_logprobs": 2})
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    for c in choices:
        content = c["logprobs"]["content"]
        assert len(content) == 3
        assert "".join(e["token"] for e in content) == c["message"]["content"]
        for e in content:
            assert set(e) == {"token", "logprob", "bytes", "top_logprobs"}
            assert e["bytes"] == list(e["token"].encode())
            assert len(e["top_logprobs"]) == 2
            assert set(e["top_logprobs"][0]) == {"token", "logprob", "bytes"}


def test_chat_logprobs_without_top(client: TestClient, engine: FakeEngine) -> None:
    r = client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "logprobs": True})
    assert engine.calls[-1][1].logprobs == 0
    assert all(e["top_logprobs"] == [] for e in r.json()["choices"][0]["logprobs"]["content"])


def test_tokenize_detokenize(client: TestClient, engine: FakeEngine) -> None:
    r = client.post("/tokenize", json={"prompt": "hi"})
    assert r.json() == {"tokens": [1, 3 + ord("h"), 3 + ord("i")], "count": 3,
                        "max_model_len": 256}
    r = client.post("/tokenize", json={"prompt": "hi", "add_special_tokens": False})
    assert r.json()["tokens"] == [3 + ord("h"), 3 + ord("i")]
    r = client.post("/tokenize", json={"messages": [{"role": "user", "content": "a"}]})
    assert r.json()["tokens"] == engine.tokenizer.encode("<user>a\n<assistant>",
                                                         add_special_tokens=False)
    r = client.post("/detokenize", json={"tokens": [3 + ord("o"), 3 + ord("k")]})
    assert r.json() == {"prompt": "ok"}


def test_openapi_documents_request_bodies(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    body = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    ref = body["content"]["application/json"]["schema"]["$ref"]
    assert "messages" in schemas[ref.rsplit("/", 1)[1]]["properties"]
    # Every reference in the document resolves (tools like schemathesis rely on it).
    refs = re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(spec))
    assert refs and all(name in schemas for name in refs), set(refs) - set(schemas)
