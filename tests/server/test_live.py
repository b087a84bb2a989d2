"""Against a live uvicorn on 127.0.0.1: the official openai client, disconnects, concurrency."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import openai
import pytest

from tests.server.conftest import LiveServer
from tests.server.fake_engine import FakeEngine
from tests.server.test_endpoints import greedy_text

USER = [{"role": "user", "content": "hi"}]


def client_for(server: LiveServer, **kw: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=kw.pop("api_key", "unused"),
                         max_retries=0, timeout=10, **kw)  # type: ignore[arg-type]


def test_openai_client_all_calls(live_server: LiveServer, engine: FakeEngine) -> None:
    client = client_for(live_server)
    assert [m.id for m in client.models.list()] == ["fake-model"]

    c = client.completions.create(model="fake-model", prompt="hello", max_tokens=5,
                                  temperature=0, logprobs=2)
    ids = engine.tokenizer.encode("hello")
    assert c.choices[0].text == greedy_text(ids, 5)
    assert c.choices[0].finish_reason == "length"
    assert c.usage is not None and c.usage.completion_tokens == 5
    assert c.choices[0].logprobs is not None and len(c.choices[0].logprobs.tokens or []) == 5

    chat = client.chat.completions.create(model="fake-model", messages=USER, max_tokens=4,
                                          n=2, temperature=0.7, seed=1, logprobs=True,
                                          top_logprobs=2)
    assert len(chat.choices) == 2
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].logprobs is not None
    entry = chat.choices[0].logprobs.content[0]  # type: ignore[index]
    assert len(entry.top_logprobs) == 2 and entry.bytes == list(entry.token.encode())
    assert chat.usage is not None and chat.usage.completion_tokens == 8

    chunks = list(client.chat.completions.create(
        model="fake-model", messages=USER, max_tokens=3, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert len(text) == 3
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + 3

    stream = client.completions.create(model="fake-model", prompt=["a", "b"], max_tokens=2,
                                       stream=True)
    got = {ch.choices[0].index for ch in stream}
    assert got == {0, 1}


def test_openai_client_errors(live_server: LiveServer, engine: FakeEngine) -> None:
    client = client_for(live_server)
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="nope", prompt="x")
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="fake-model", prompt="x" * 300, max_tokens=10)
    assert e.value.code == "context_length_exceeded"
    engine.queue_full = True
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="fake-model", messages=USER)
    engine.queue_full = False
    engine.die_after_tokens = 1
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(model="fake-model", messages=USER,
                                                stream=True, max_tokens=5):
            pass


def test_openai_client_with_api_key() -> None:
    with LiveServer(FakeEngine(), api_key="k1") as server:
        with pytest.raises(openai.AuthenticationError):
            client_for(server, api_key="wrong").models.list()
        assert client_for(server, api_key="k1").models.list().data[0].id == "fake-model"


def wait_until(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"messages": USER, "max_tokens": 200, "stream": True}),
    ("/v1/completions", {"prompt": ["a", "b"], "max_tokens": 200, "stream": True}),
])
def test_disconnect_mid_stream_aborts(path: str, body: dict) -> None:
    engine = FakeEngine(token_delay=0.02)
    with LiveServer(engine) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        with http.stream("POST", path, json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            for _ in range(3):
                next(lines)
            assert engine.running
        # The response is closed mid-stream: the request(s) must be aborted in the engine.
        wait_until(lambda: not engine.running)
        expected = 2 if isinstance(body.get("prompt"), list) else 1
        wait_until(lambda: len(engine.aborted) == expected)
        assert engine.finished == []
        stats = http.get("/v1/localserve/stats").json()
        assert stats["num_running"] == 0
        metrics = http.get("/metrics").text
        assert 'finished_reason="abort"' in metrics


@pytest.mark.parametrize("stream, token_delay", [
    (False, 0.05),  # while the response is being generated
    (True, 1.0),  # before the first token: the stream has not started yet
])
def test_disconnect_before_the_response_aborts(stream: bool, token_delay: float,
                                               caplog: pytest.LogCaptureFixture) -> None:
    engine = FakeEngine(token_delay=token_delay)
    with LiveServer(engine) as server:
        sock = socket.create_connection(("127.0.0.1", server.port))
        payload = b'{"prompt": "x", "max_tokens": 200, "stream": %s}' % (
            b"true" if stream else b"false")
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\n"
                     b"content-type: application/json\r\n"
                     b"content-length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
        wait_until(lambda: engine.running)
        sock.close()
        wait_until(lambda: not engine.running and len(engine.aborted) == 1)
        assert engine.finished == []
        metrics = httpx.get(server.url + "/metrics").text
        assert 'localserve:request_success_total{finished_reason="abort",model_name="fake-model"}' \
            ' 1.0' in metrics
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "WARNING")], \
        [r.getMessage() for r in caplog.records]


def test_concurrent_streams_do_not_serialise() -> None:
    # 16 streams of 10 tokens at 20 ms/token: about 0.2 s if concurrent, 3.2 s if serialised.
    engine = FakeEngine(token_delay=0.02)

    async def run(url: str) -> list[str]:
        async with httpx.AsyncClient(base_url=url, timeout=20) as http:
            async def one(i: int) -> str:
                r = await http.post("/v1/completions", json={
                    "prompt": f"p{i}", "max_tokens": 10, "temperature": 0})
                return r.json()["choices"][0]["text"]

            return await asyncio.gather(*(one(i) for i in range(16)))

    with LiveServer(engine) as server:
        start = time.monotonic()
        texts = asyncio.run(run(server.url))
        elapsed = time.monotonic() - start
    assert elapsed < 2.0, elapsed
    for i, text in enumerate(texts):
        assert text == greedy_text(engine.tokenizer.encode(f"p{i}"), 10)
