"""The polling client over httpx.MockTransport, record/replay, and this machine's hardware."""

from __future__ import annotations

import asyncio
import types

import httpx
import pytest

from localserve.tui.client import DashboardClient, HttpSource, RawSample
from localserve.tui.hardware import LocalHardware
from localserve.tui.recording import RecordingSource, ReplaySource, load_recording


def poll(client: DashboardClient, times: int = 1):
    async def go():
        snap = None
        for _ in range(times):
            snap = await client.poll()
        return snap

    return asyncio.run(go())


def test_polls_stats_and_metrics_with_bearer_key(
    fake_server_factory, make_http_client, normal_samples
):
    server = fake_server_factory(normal_samples, api_key="sk-test")
    client = make_http_client(server)
    snap = poll(client, 3)
    assert snap.connected and snap.num_polls == 3
    assert snap.stats.model == "gemma-3-270m-it-Q4_K_M"
    assert {r.url.path for r in server.requests} == {"/v1/localserve/stats", "/metrics"}
    assert all(r.headers["authorization"] == "Bearer sk-test" for r in server.requests)
    # 3 recorded samples, 5 s apart on the server clock: rates come from their deltas
    s0, s2 = normal_samples[0].stats, normal_samples[2].stats
    expected = (s2["generation_tokens_total"] - s0["generation_tokens_total"]) / 10.0
    assert snap.generation_tps == pytest.approx(expected)
    # 4 first tokens in these 10 s; no request finished, so E2E shows its all-time numbers
    assert (snap.latency.ttft.scope, snap.latency.ttft.count) == ("window", 4)
    assert snap.latency.e2e.scope == "all" and snap.latency.e2e.count > 0


def test_wrong_key_is_reported_not_raised(fake_server_factory, normal_samples):
    server = fake_server_factory(normal_samples, api_key="right")
    source = HttpSource("http://fake", "wrong", transport=server.transport)
    snap = poll(DashboardClient(source), 1)
    assert snap.connection.status == "disconnected"
    assert "401" in snap.connection.message and "--api-key" in snap.connection.message


def test_unreachable_backs_off_then_reconnects(
    fake_server_factory, make_http_client, normal_samples
):
    server = fake_server_factory(normal_samples)
    client = make_http_client(server, backoff_base_s=0.5, backoff_max_s=2.0)
    poll(client, 2)
    server.down = True
    delays = []
    for _ in range(4):
        snap = poll(client)
        delays.append(client.next_delay_s)
    assert snap.connection.status == "disconnected"
    assert snap.connection.message == "connection refused"
    assert delays == [0.5, 1.0, 2.0, 2.0]
    assert snap.stats is not None  # the last data stays on screen
    server.down = False
    snap = poll(client)
    assert snap.connected and client.next_delay_s == client.poll_interval_s


def test_server_not_ready_uses_health():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    source = HttpSource("http://fake", transport=httpx.MockTransport(handler))
    snap = poll(DashboardClient(source), 1)
    assert snap.connection.message == "server not ready yet (/health 503)"


def test_garbage_answer_does_not_raise():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>not json</html>")

    source = HttpSource("http://fake", transport=httpx.MockTransport(handler))
    snap = poll(DashboardClient(source), 1)
    assert snap.connection.status == "disconnected" and "JSON" in snap.connection.message


def test_missing_metrics_endpoint_leaves_latency_empty(normal_samples):
    stats = normal_samples[0].stats

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/localserve/stats":
            return httpx.Response(200, json=stats)
        return httpx.Response(404)

    source = HttpSource("http://fake", transport=httpx.MockTransport(handler))
    snap = poll(DashboardClient(source), 1)
    assert snap.connected and not snap.latency.available


def test_record_then_replay_gives_the_same_snapshots(
    tmp_path, fake_server_factory, make_http_client, normal_samples
):
    path = tmp_path / "rec.jsonl"
    server = fake_server_factory(normal_samples[:5])
    live = make_http_client(server)
    live.source = RecordingSource(live.source, path)
    live_snaps = [poll(live) for _ in range(5)]
    asyncio.run(live.aclose())
    recorded = load_recording(path)
    assert [r.stats for r in recorded] == [s.stats for s in normal_samples[:5]]
    assert all(isinstance(r, RawSample) and r.metrics for r in recorded)

    replay = DashboardClient(ReplaySource(path), poll_interval_s=0)
    replay_snaps = [poll(replay) for _ in range(5)]
    for a, b in zip(live_snaps, replay_snaps, strict=True):
        assert (a.generation_tps, a.prompt_series, a.latency, a.requests) == (
            b.generation_tps,
            b.prompt_series,
            b.latency,
            b.requests,
        )
    end = poll(replay)
    assert end.connection.status == "replay_done" and replay.finished
    assert end.stats == replay_snaps[-1].stats  # the last frame stays


def test_bad_recording_line_names_its_number(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"ts": 1, "stats": {}}\n\n{"ts": 2}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:3"):
        load_recording(path)


def fake_pynvml(fail_util: bool = False) -> types.SimpleNamespace:
    mem = types.SimpleNamespace(used=6 * 2**30, total=24 * 2**30)

    def util(handle):
        if fail_util:
            raise RuntimeError("not supported")
        return types.SimpleNamespace(gpu=45)

    return types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetMemoryInfo=lambda h: mem,
        nvmlDeviceGetUtilizationRates=util,
        nvmlDeviceGetName=lambda h: b"NVIDIA RTX A6000",
    )


def test_hardware_with_nvml():
    hw = LocalHardware(nvml=fake_pynvml(), gpu_note="").sample()
    assert hw.ram_total > 0 and 0 <= hw.cpu_percent <= 100
    assert [(g.index, g.name, g.memory_used, g.utilization) for g in hw.gpus] == [
        (0, "NVIDIA RTX A6000", 6 * 2**30, 45.0),
        (1, "NVIDIA RTX A6000", 6 * 2**30, 45.0),
    ]
    assert LocalHardware(nvml=fake_pynvml(True), gpu_note="").sample().gpus[0].utilization is None


def test_hardware_without_nvml(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    hw = LocalHardware().sample()
    assert hw.gpus == () and hw.gpu_note == "n/a (no pynvml)"
    broken = types.SimpleNamespace(nvmlInit=lambda: (_ for _ in ()).throw(OSError("no driver")))
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    assert LocalHardware().sample().gpu_note == "n/a (OSError)"
