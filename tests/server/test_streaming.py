"""SSE streams parsed event by event: order, shapes, usage, [DONE], errors after the start."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient

from tests.server.fake_engine import FakeEngine
from tests.server.test_endpoints import greedy_text

Parse = Callable[[str], list[Any]]
USER = [{"role": "user", "content": "hi"}]


def stream(client: TestClient, path: str, body: dict, sse: Parse) -> list[Any]:
    r = client.post(path, json={**body, "stream": True})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    return events[:-1]


def test_chat_stream_order(client: TestClient, engine: FakeEngine, sse: Parse) -> None:
    events = stream(client, "/v1/chat/completions",
                    {"messages": USER, "max_tokens": 4, "temperature": 0}, sse)
    ids = engine.calls[-1][0]
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert len({e["id"] for e in events}) == 1 and "usage" not in events[0]
    deltas = [e["choices"][0] for e in events]
    assert deltas[0]["delta"] == {"role": "assistant", "content": ""}
    content = [d["delta"]["content"] for d in deltas[1:-1]]
    assert all(d["finish_reason"] is None for d in deltas[:-1])
    assert "".join(content) == greedy_text(ids, 4)
    assert deltas[-1]["delta"] == {} and deltas[-1]["finish_reason"] == "length"


def test_chat_stream_include_usage(client: TestClient, engine: FakeEngine, sse: Parse) -> None:
    events = stream(client, "/v1/chat/completions",
                    {"messages": USER, "max_tokens": 3,
                     "stream_options": {"include_usage": True}}, sse)
    *chunks, last = events
    assert all(c["usage"] is None for c in chunks)
    assert last["choices"] == []
    ids = engine.calls[-1][0]
    assert last["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 3,
                             "total_tokens": len(ids) + 3}


def test_chat_stream_n_interleaved(client: TestClient, sse: Parse) -> None:
    events = stream(client, "/v1/chat/completions",
                    {"messages": USER, "max_tokens": 3, "n": 2, "temperature": 1, "seed": 3},
                    sse)
    indices = [e["choices"][0]["index"] for e in events]
    # Role deltas for every choice first, then tokens alternate between the choices.
    assert indices[:2] == [0, 1] and indices[2:4] == [0, 1]
    for i in (0, 1):
        mine = [e["choices"][0] for e in events if e["choices"][0]["index"] == i]
        assert mine[0]["delta"]["role"] == "assistant"
        assert mine[-1]["finish_reason"] == "length"
        assert len("".join(m["delta"].get("content", "") for m in mine)) == 3


def test_chat_stream_logprobs(client: TestClient, sse: Parse) -> None:
    events = stream(client, "/v1/chat/completions",
                    {"messages": USER, "max_tokens": 2, "logprobs": True, "top_logprobs": 1},
                    sse)
    with_content = [e["choices"][0] for e in events if e["choices"][0]["delta"].get("content")]
    assert len(with_content) == 2
    for c in with_content:
        (entry,) = c["logprobs"]["content"]
        assert entry["token"] == c["delta"]["content"] and len(entry["top_logprobs"]) == 1


def test_completion_stream(client: TestClient, engine: FakeEngine, sse: Parse) -> None:
    events = stream(client, "/v1/completions",
                    {"prompt": "abc", "max_tokens": 5, "temperature": 0, "echo": True,
                     "logprobs": None, "stream_options": {"include_usage": True}}, sse)
    ids = engine.calls[-1][0]
    *chunks, usage = events
    assert all(c["object"] == "text_completion" for c in events)
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text == "abc" + greedy_text(ids, 5)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 5


def test_completion_stream_multi_prompt_n(client: TestClient, sse: Parse) -> None:
    events = stream(client, "/v1/completions",
                    {"prompt": ["a", "b"], "max_tokens": 2, "n": 2, "logprobs": 1}, sse)
    by_index: dict[int, list[dict]] = {}
    for e in events:
        (c,) = e["choices"]
        by_index.setdefault(c["index"], []).append(c)
    assert sorted(by_index) == [0, 1, 2, 3]
    for chunks in by_index.values():
        assert chunks[-1]["finish_reason"] == "length"
        offsets = [o for c in chunks for o in c["logprobs"]["text_offset"]]
        assert offsets == [0, 1]


def test_error_after_stream_start_is_an_event(client: TestClient, engine: FakeEngine,
                                              sse: Parse) -> None:
    engine.die_after_tokens = 2
    events = stream(client, "/v1/chat/completions", {"messages": USER, "max_tokens": 10}, sse)
    assert events[-1]["error"]["code"] == "engine_dead"
    assert events[-1]["error"]["type"] == "service_unavailable"
    contents = [e["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert contents[1:] == [c for c in contents[1:] if c]  # the two tokens made it out


def test_non_stream_engine_death_mid_request_is_503(client: TestClient,
                                                    engine: FakeEngine) -> None:
    engine.die_after_tokens = 2
    r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 10})
    assert r.status_code == 503 and r.json()["error"]["code"] == "engine_dead"
