"""The real default model behind the real server, driven by the official openai client.

Generation stays short (max_tokens <= 16): two CPU cores. Every test leaves the server healthy
with nothing running, which the next one relies on.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from tests.e2e.conftest import READY, RealServer

pytestmark = pytest.mark.slow
PROMPT = "The capital of France is"
USER = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture
def client(real_server: RealServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=real_server.base_url, api_key="unused", max_retries=0,
                         timeout=300)


@pytest.fixture(autouse=True)
def healthy_and_idle_after(real_server: RealServer) -> object:
    yield
    with httpx.Client(base_url=real_server.url, timeout=30) as http:
        assert http.get("/health").status_code == 200
        deadline = time.monotonic() + 60
        while (stats := http.get("/v1/localserve/stats").json())["num_running"]:
            assert time.monotonic() < deadline, stats
            time.sleep(0.1)
        assert stats["num_waiting"] == 0


def test_up_prints_the_ready_line_and_serves(real_server: RealServer,
                                             client: openai.OpenAI) -> None:
    m = READY.match(real_server.ready_line)
    assert m is not None and m.group(3) == "gemma-3-270m"
    assert [model.id for model in client.models.list()] == ["gemma-3-270m"]
    c = client.completions.create(model="gemma-3-270m", prompt=PROMPT, max_tokens=4,
                                  temperature=0)
    assert c.choices[0].text and c.usage is not None and c.usage.completion_tokens >= 1


def test_completion_length_logprobs_and_seed(client: openai.OpenAI) -> None:
    c = client.completions.create(model="gemma-3-270m", prompt=PROMPT, max_tokens=4,
                                  temperature=0, logprobs=3)
    choice = c.choices[0]
    assert choice.finish_reason == "length"
    assert c.usage is not None and c.usage.completion_tokens == 4
    lp = choice.logprobs
    assert lp is not None and len(lp.tokens or []) == 4
    assert "".join(lp.tokens or []) == choice.text
    assert all(x is not None and x <= 0 for x in lp.token_logprobs or [])
    assert all(1 <= len(t) <= 3 for t in lp.top_logprobs or [])
    # The chosen greedy token is the most likely one.
    for token, logprob, top in zip(lp.tokens or [], lp.token_logprobs or [],
                                   lp.top_logprobs or [], strict=True):
        assert logprob == pytest.approx(max(top.values()), abs=1e-4), (token, top)

    def sampled() -> str:
        return client.completions.create(model="gemma-3-270m", prompt=PROMPT, max_tokens=8,
                                         temperature=1.0, seed=1234).choices[0].text

    assert sampled() == sampled()


def test_stop_string(client: openai.OpenAI) -> None:
    full = client.completions.create(model="gemma-3-270m", prompt=PROMPT, max_tokens=12,
                                     temperature=0).choices[0].text
    assert len(full) > 6, full
    stop = full[3:6]
    stopped = client.completions.create(model="gemma-3-270m", prompt=PROMPT, max_tokens=12,
                                        temperature=0, stop=[stop]).choices[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == full[:full.index(stop)]


def test_chat_n2_and_logprobs(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(model="gemma-3-270m", messages=USER, max_tokens=6,
                                          n=2, temperature=0.8, seed=7, logprobs=True,
                                          top_logprobs=2)
    assert [c.index for c in chat.choices] == [0, 1]
    for c in chat.choices:
        assert c.message.role == "assistant" and c.finish_reason in ("length", "stop")
        assert c.logprobs is not None and c.logprobs.content
        assert "".join(e.token for e in c.logprobs.content) == c.message.content
        assert all(len(e.top_logprobs) == 2 for e in c.logprobs.content)
    assert chat.usage is not None
    assert chat.usage.completion_tokens == sum(len(c.logprobs.content)  # type: ignore[union-attr]
                                               for c in chat.choices)


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="gemma-3-270m", messages=USER, max_tokens=8, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("length", "stop") and all(f is None for f in finishes[:-1])
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert 1 <= usage.completion_tokens <= 8
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = client.chat.completions.create(model="gemma-3-270m", messages=USER, max_tokens=8,
                                           temperature=0)
    assert streamed == whole.choices[0].message.content


@pytest.mark.parametrize("kind, body, status, code", [
    ("completions", {"prompt": PROMPT, "max_tokens": 40000}, 400, "context_length_exceeded"),
    ("completions", {"prompt": PROMPT, "temperature": -2}, 400, "invalid_value"),
    ("completions", {"prompt": PROMPT, "model": "gpt-4"}, 404, "model_not_found"),
    ("completions", {"prompt": [10**9]}, 400, "invalid_value"),
    ("chat/completions", {"messages": []}, 400, "invalid_value"),
    ("chat/completions", {"messages": USER, "top_p": 7}, 400, "invalid_value"),
])
def test_bad_inputs(real_server: RealServer, kind: str, body: dict, status: int,
                    code: str) -> None:
    with httpx.Client(base_url=real_server.base_url, timeout=60) as http:
        r = http.post(f"/{kind}", json=body)
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert err["code"] == code and set(err) == {"message", "type", "param", "code"}
        r = http.post(f"/{kind}", content=b"{not json", headers={"content-type":
                                                                 "application/json"})
        assert r.status_code == 400


def test_32_concurrent_streams_match_one_at_a_time(real_server: RealServer) -> None:
    prompts = [f"Fact number {i}: the" for i in range(32)]
    body = {"max_tokens": 6, "temperature": 0, "ignore_eos": True}

    async def stream_one(http: httpx.AsyncClient, prompt: str) -> str:
        parts = []
        async with http.stream("POST", "/completions",
                               json={**body, "prompt": prompt, "stream": True}) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    event = json.loads(line[6:])
                    assert "error" not in event, event
                    parts.append(event["choices"][0]["text"])
        return "".join(parts)

    async def run() -> tuple[list[str], list[str]]:
        async with httpx.AsyncClient(base_url=real_server.base_url, timeout=600) as http:
            alone = []
            for p in prompts:
                r = await http.post("/completions", json={**body, "prompt": p})
                alone.append(r.json()["choices"][0]["text"])
            together = await asyncio.gather(*(stream_one(http, p) for p in prompts))
            return alone, list(together)

    alone, together = asyncio.run(run())
    mismatches = [(i, a, t) for i, (a, t) in enumerate(zip(alone, together, strict=True))
                  if a != t]
    assert not mismatches, f"batched greedy output differs from one-at-a-time: {mismatches}"


def test_disconnect_mid_stream_leaves_nothing_running(real_server: RealServer) -> None:
    with httpx.Client(base_url=real_server.url, timeout=120) as http:
        with http.stream("POST", "/v1/completions", json={
                "prompt": PROMPT, "max_tokens": 2000, "ignore_eos": True, "stream": True}) as r:
            lines = r.iter_lines()
            seen = 0
            for line in lines:
                seen += line.startswith("data: ")
                if seen == 2:
                    break
        deadline = time.monotonic() + 30
        while (stats := http.get("/v1/localserve/stats").json())["num_running"]:
            assert time.monotonic() < deadline, f"request not aborted: {stats}"
            time.sleep(0.05)
        assert 'finished_reason="abort"' in http.get("/metrics").text
