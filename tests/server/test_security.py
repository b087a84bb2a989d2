"""API key, body-size limit (declared and chunked), CORS, and the key generated for open binds."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from localserve.server.launch import Launcher, resolve_api_key
from localserve.settings import Settings
from tests.server.conftest import LiveServer
from tests.server.fake_engine import FakeEngine
from tests.server.test_errors import assert_error

KEY = "s3cret-key"


def test_api_key_guards_v1_and_tokenizer_routes(make_client: Any, engine: FakeEngine) -> None:
    client = make_client(engine, api_key=KEY)
    for method, path, body in (("GET", "/v1/models", None),
                               ("POST", "/v1/completions", {"prompt": "x"}),
                               ("POST", "/v1/chat/completions", {"messages": []}),
                               ("GET", "/v1/localserve/stats", None),
                               ("POST", "/tokenize", {"prompt": "x"}),
                               ("POST", "/detokenize", {"tokens": [5]})):
        r = client.request(method, path, json=body)
        err = assert_error(r, 401, code="invalid_api_key", kind="authentication_error")
        assert "Bearer" in err["message"]
        assert r.headers["www-authenticate"] == "Bearer"
        r = client.request(method, path, json=body, headers={"authorization": "Bearer nope"})
        assert_error(r, 401, code="invalid_api_key")
        r = client.request(method, path, json=body, headers={"authorization": KEY})
        assert_error(r, 401)  # the scheme is required
        r = client.request(method, path, json=body, headers={"authorization": f"Bearer {KEY}"})
        assert r.status_code != 401, path
    assert engine.calls  # the authorised completion reached the engine


def test_open_routes_need_no_key(make_client: Any, engine: FakeEngine) -> None:
    client = make_client(engine, api_key=KEY)
    for path in ("/health", "/version", "/metrics"):
        assert client.get(path).status_code == 200, path


def test_no_key_configured_means_open(client: Any) -> None:
    assert client.get("/v1/models").status_code == 200


def test_body_limit_by_content_length(make_client: Any, engine: FakeEngine) -> None:
    client = make_client(engine, max_request_body_bytes=2048)
    r = client.post("/v1/completions", json={"prompt": "x" * 4096})
    err = assert_error(r, 413, code="request_too_large")
    assert "2048" in err["message"]
    assert engine.calls == []
    assert client.post("/v1/completions", json={"prompt": "x" * 100}).status_code == 200


def test_body_limit_applies_before_auth_is_checked_second(make_client: Any,
                                                          engine: FakeEngine) -> None:
    client = make_client(engine, api_key=KEY, max_request_body_bytes=2048)
    # Unauthenticated: 401 without reading the body.
    assert_error(client.post("/v1/completions", json={"prompt": "x" * 4096}), 401)
    r = client.post("/v1/completions", json={"prompt": "x" * 4096},
                    headers={"authorization": f"Bearer {KEY}"})
    assert_error(r, 413)


def test_body_limit_for_chunked_bodies() -> None:
    engine = FakeEngine()
    with LiveServer(engine, max_request_body_bytes=4096) as server:
        def chunks() -> Iterator[bytes]:
            yield b'{"prompt": "'
            for _ in range(100):
                yield b"x" * 1024
            yield b'"}'

        with httpx.Client(base_url=server.url, timeout=10) as http:
            r = http.post("/v1/completions", content=chunks(),
                          headers={"content-type": "application/json"})
            assert "content-length" not in r.request.headers
            assert r.request.headers["transfer-encoding"] == "chunked"
            assert_error(r, 413, code="request_too_large")

            def small() -> Iterator[bytes]:
                yield b'{"prompt": "hi", '
                yield b'"max_tokens": 2}'

            r = http.post("/v1/completions", content=small(),
                          headers={"content-type": "application/json"})
            assert r.status_code == 200, r.text
    assert len(engine.calls) == 1


def test_cors_off_by_default(client: Any) -> None:
    r = client.get("/v1/models", headers={"origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    r = client.options("/v1/models", headers={"origin": "http://evil.example",
                                              "access-control-request-method": "GET"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_allowed_origins(make_client: Any, engine: FakeEngine) -> None:
    client = make_client(engine, allowed_origins="http://app.local", api_key=KEY)
    r = client.options("/v1/chat/completions", headers={
        "origin": "http://app.local", "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type"})
    assert r.status_code == 200  # preflight needs no key
    assert r.headers["access-control-allow-origin"] == "http://app.local"
    r = client.get("/v1/models", headers={"origin": "http://app.local"})
    assert r.status_code == 401  # errors carry CORS headers so browsers can read them
    assert r.headers["access-control-allow-origin"] == "http://app.local"
    r = client.get("/v1/models", headers={"origin": "http://other.local",
                                          "authorization": f"Bearer {KEY}"})
    assert "access-control-allow-origin" not in r.headers


@pytest.mark.parametrize("host, key, no_key, generated", [
    ("127.0.0.1", None, False, False),
    ("localhost", None, False, False),
    ("::1", None, False, False),
    ("0.0.0.0", None, False, True),
    ("192.168.1.10", None, False, True),
    ("0.0.0.0", "mine", False, False),
    ("0.0.0.0", None, True, False),
])
def test_generated_key_for_open_binds(host: str, key: str | None, no_key: bool,
                                      generated: bool) -> None:
    settings, new = resolve_api_key(Settings(host=host, api_key=key, no_api_key=no_key))
    assert (new is not None) == generated
    if generated:
        assert settings.api_key == new and len(new) > 20
    else:
        assert settings.api_key == key


def test_generated_key_is_printed_once_to_stderr(engine: FakeEngine) -> None:
    out, err = io.StringIO(), io.StringIO()
    launcher = Launcher(Settings(host="0.0.0.0", port=8000), lambda s, p: engine, out, err)
    launcher.engine = engine
    launcher._announce()
    key = launcher.settings.api_key
    assert key and err.getvalue().count(key) == 1 and "--no-api-key" in err.getvalue()
    assert out.getvalue() == ("localserve ready: http://0.0.0.0:8000/v1 (model fake-model, "
                              "backend fake)\n")
