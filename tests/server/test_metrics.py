"""/metrics: every series under both prefixes, engine values read at scrape time, no globals."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.server.fake_engine import FakeEngine

COUNTERS = ("request_success", "prompt_tokens", "generation_tokens", "num_preemptions",
            "prefix_cache_queries", "prefix_cache_hits")
GAUGES = ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc")
HISTOGRAMS = ("time_to_first_token_seconds", "inter_token_latency_seconds",
              "e2e_request_latency_seconds", "request_queue_time_seconds")


def scrape(client: Any) -> dict[str, float]:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())
                              if k not in ("model_name", "le"))
            key = s.name + (f"{{{labels}}}" if labels else "")
            if "le" in s.labels:
                key += f"[le={s.labels['le']}]"
            samples[key] = s.value
        assert family.name.split(":")[0] in ("localserve", "vllm"), family.name
    return samples


def test_exposition_names_under_both_prefixes(client: Any) -> None:
    client.post("/v1/completions", json={"prompt": "x", "max_tokens": 3})
    text = client.get("/metrics").text
    for prefix in ("localserve", "vllm"):
        for name in COUNTERS:
            assert f"# TYPE {prefix}:{name}_total counter" in text or \
                f"# TYPE {prefix}:{name} counter" in text, name
            assert f"\n{prefix}:{name}_total{{" in text, name
        for name in GAUGES:
            assert f"# TYPE {prefix}:{name} gauge" in text, name
        for name in HISTOGRAMS:
            assert f"# TYPE {prefix}:{name} histogram" in text, name
            assert f"\n{prefix}:{name}_bucket{{" in text, name
    assert 'model_name="fake-model"' in text


def test_values(client: Any, engine: FakeEngine) -> None:
    client.post("/v1/completions", json={"prompt": "ab", "max_tokens": 4, "n": 2})
    engine.eos_after = 1
    client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "q"}]})
    m = scrape(client)
    for p in ("localserve", "vllm"):
        assert m[f"{p}:request_success_total{{finished_reason=length}}"] == 2
        assert m[f"{p}:request_success_total{{finished_reason=stop}}"] == 1
        assert m[f"{p}:prompt_tokens_total"] == engine.num_prompt_tokens
        assert m[f"{p}:generation_tokens_total"] == engine.num_generation_tokens == 10
        assert m[f"{p}:num_preemptions_total"] == 3
        assert m[f"{p}:prefix_cache_queries_total"] == 40
        assert m[f"{p}:prefix_cache_hits_total"] == 10
        assert m[f"{p}:num_requests_running"] == 0
        assert m[f"{p}:num_requests_waiting"] == 0
        assert m[f"{p}:kv_cache_usage_perc"] == 0.0
        assert m[f"{p}:time_to_first_token_seconds_count"] == 2
        assert m[f"{p}:e2e_request_latency_seconds_count"] == 2
        assert m[f"{p}:request_queue_time_seconds_count"] == 2
        # 8 + 2 tokens; the first token of each request has no gap before it (n=2: 2 firsts).
        assert m[f"{p}:inter_token_latency_seconds_count"] == (8 - 2) + (2 - 1)


def test_gauges_read_at_scrape_time(client: Any, engine: FakeEngine) -> None:
    engine.running.update({"a": 0, "b": 1})
    m = scrape(client)
    assert m["localserve:num_requests_running"] == 2
    assert m["vllm:kv_cache_usage_perc"] == 0.2


def test_registries_are_per_app(make_client: Any) -> None:
    a, b = make_client(FakeEngine()), make_client(FakeEngine())
    a.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert scrape(a)["localserve:request_success_total{finished_reason=length}"] == 1
    assert "localserve:request_success_total{finished_reason=length}" not in scrape(b)


def test_scrape_survives_a_dead_engine(client: Any, engine: FakeEngine) -> None:
    def broken() -> None:
        raise RuntimeError("dead")

    engine.stats = broken  # type: ignore[method-assign]
    r = client.get("/metrics")
    assert r.status_code == 200
    assert "localserve:time_to_first_token_seconds" in r.text
