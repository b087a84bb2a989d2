"""The CLI and its settings: flags/env/config precedence, exit code 2 with a fix, models, pull."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from localserve import __version__
from localserve.cli import build_parser, main, settings_from_args
from localserve.model_store import (
    ModelNotFoundError,
    choose_files,
    model_facts,
    num_parameters,
    read_gguf_metadata,
    resolve_model,
)
from localserve.settings import ConfigFileError, Settings

ROOT = Path(__file__).resolve().parents[2]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse's own errors
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


# --- settings ------------------------------------------------------------------------------

def test_precedence_flag_over_env_over_file(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "ls.toml"
    cfg.write_text('port = 9001\nmax-num-seqs = 8\nhost = "127.0.0.2"\n'
                   'allowed_origins = ["http://a"]\n')
    monkeypatch.setenv("LOCALSERVE_PORT", "9002")
    monkeypatch.setenv("LOCALSERVE_ALLOWED_ORIGINS", "http://x, http://y")
    args = build_parser().parse_args(["serve", "--config", str(cfg), "--max-num-seqs", "4"])
    s = settings_from_args(args)
    assert s.port == 9002  # env beats file
    assert s.max_num_seqs == 4  # flag beats file
    assert s.host == "127.0.0.2"  # file beats default
    assert s.allowed_origins == ["http://x", "http://y"]
    monkeypatch.setenv("LOCALSERVE_CONFIG", str(cfg))
    assert Settings().max_num_seqs == 8


def test_json_config_and_engine_config(tmp_path: Path) -> None:
    cfg = tmp_path / "ls.json"
    cfg.write_text(json.dumps({"max_model_len": 512, "scheduling_policy": "priority",
                               "enable-prefix-caching": False, "num_kv_blocks": 64}))
    ec = Settings(config=cfg, block_size=32).to_engine_config()
    assert ec.model.max_model_len == 512 and ec.scheduler.policy == "priority"
    assert ec.cache.enable_prefix_caching is False and ec.cache.block_size == 32
    assert ec.cache.num_blocks == 64
    # Batch limits left open are the device's to choose; async scheduling is on by default.
    assert ec.scheduler.max_num_seqs is None and ec.scheduler.async_scheduling is True
    assert Settings(async_scheduling=False).to_engine_config().scheduler.async_scheduling is False


@pytest.mark.parametrize("text, fragment", [
    ("prot = 1\n", "unknown setting(s) prot"),
    ("port = \n", "not valid TOML"),
    ("config = 'x.toml'\n", "unknown setting(s) config"),
])
def test_bad_config_files(tmp_path: Path, text: str, fragment: str) -> None:
    cfg = tmp_path / "ls.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigFileError, match=re.escape(fragment)):
        Settings(config=cfg)


def test_flags_are_generated_from_settings() -> None:
    parser = build_parser()
    args = parser.parse_args(["serve", "m", "--no-enable-prefix-caching", "--enforce-eager",
                              "--scheduling-policy", "priority", "--gpu-memory-utilization",
                              "0.5", "--no-api-key", "--allowed-origins", "http://a,http://b"])
    s = settings_from_args(args, model=args.model_arg)
    assert (s.model, s.enable_prefix_caching, s.enforce_eager) == ("m", False, True)
    assert s.scheduling_policy == "priority" and s.gpu_memory_utilization == 0.5
    assert s.no_api_key and s.allowed_origins == ["http://a", "http://b"]
    help_text = parser._subparsers._group_actions[0].choices["serve"].format_help()  # type: ignore[union-attr]
    for flag in ("--host", "--port", "--api-key", "--served-model-name", "--max-model-len",
                 "--max-num-seqs", "--max-num-batched-tokens", "--gpu-memory-utilization",
                 "--block-size", "--enable-prefix-caching", "--no-enable-prefix-caching",
                 "--dtype", "--load-format", "--backend", "--seed", "--scheduling-policy",
                 "--enforce-eager", "--allowed-origins", "--no-api-key", "--config"):
        assert flag in help_text, flag


# --- bad input: message with the fix, exit 2, no traceback ---------------------------------

@pytest.mark.parametrize("argv, fragment", [
    (["serve", "--max-num-seqs", "0"], "--max-num-seqs"),
    (["serve", "--block-size", "3"], "power of two"),
    (["serve", "--gpu-memory-utilization", "2"], "--gpu-memory-utilization"),
    (["serve", "--port", "99999"], "--port"),
    (["serve", "/no/such/model.gguf"], "localserve pull"),
    (["serve", "no-such-org/no-such-model"], "localserve pull no-such-org/no-such-model"),
    (["serve", "--config", "/no/such/file.toml"], "cannot read config file"),
    (["up", "--scheduling-policy", "lifo"], "invalid choice"),
    (["up", "--backend", "metal"], "invalid choice: 'metal'"),
    (["serve", "--max-model-len", "many"], "invalid int value"),
    (["serve", "--bogus-flag"], "unrecognized arguments"),
    (["frobnicate"], "invalid choice"),
    ([], "required"),
    (["pull", "not-a-repo-id"], "org/name"),
])
def test_bad_input_exits_2_with_a_message(capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                          argv: list[str], fragment: str) -> None:
    monkeypatch.setenv("LOCALSERVE_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert fragment in err
    assert "Traceback" not in err


def test_bad_env_var_names_the_variable(capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALSERVE_MAX_NUM_SEQS", "-4")
    code, _, err = run_cli(capsys, "up")
    assert code == 2 and "LOCALSERVE_MAX_NUM_SEQS" in err


def test_python_dash_m_and_version() -> None:
    r = subprocess.run([sys.executable, "-m", "localserve", "--version"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"localserve {__version__}"


# --- models on disk ----------------------------------------------------------------------

def write_gguf(path: Path, *, arch: str = "llama", layers: int = 4) -> Path:
    import numpy as np
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), arch)
    w.add_block_count(layers)
    w.add_context_length(2048)
    w.add_embedding_length(256)
    w.add_head_count(8)
    w.add_head_count_kv(2)
    w.add_token_list([f"t{i}" for i in range(500)])  # an array of strings to skip
    w.add_tensor("x", np.zeros(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_metadata_and_model_facts(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf")
    with path.open("rb") as f:
        kv = read_gguf_metadata(f)
    assert kv["general.architecture"] == "llama" and kv["llama.block_count"] == 4
    facts = model_facts(path)
    assert (facts.num_layers, facts.num_kv_heads, facts.head_dim) == (4, 2, 32)
    assert facts.context_length == 2048 and facts.weights_bytes == path.stat().st_size
    assert facts.kv_bytes_per_token() == 2 * 4 * 2 * 32 * 2
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 1, "hidden_size": 64, "max_position_embeddings": 128}))
    (folder / "model.safetensors").write_bytes(b"0" * 100)
    facts = model_facts(folder)
    assert (facts.num_layers, facts.num_kv_heads, facts.head_dim) == (2, 1, 16)
    assert facts.weights_bytes == 100


def test_num_parameters_reads_only_the_tensor_tables(tmp_path: Path) -> None:
    """Counted from the GGUF tensor table and the safetensors headers, checked against the
    gguf and safetensors packages' own readers on tiny random checkpoints."""
    import gguf
    from safetensors import safe_open

    from tests.helpers.tiny_models import make_tiny_checkpoint

    folder = make_tiny_checkpoint(tmp_path, "llama", "safetensors").path
    expected = 0
    for shard in folder.glob("*.safetensors"):
        with safe_open(str(shard), "np") as f:
            names = f.keys()  # (a safe_open handle, not a dict)
            expected += sum(int(np.prod(f.get_slice(k).get_shape())) for k in names)
    assert num_parameters(folder) == expected > 0
    path = make_tiny_checkpoint(tmp_path, "llama", "gguf-q8_0").path
    reader = gguf.GGUFReader(path)
    assert num_parameters(path) == sum(int(t.n_elements) for t in reader.tensors) > 0
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(ValueError, match="not a safetensors header"):
        num_parameters(bad)
    (bad / "model.safetensors").write_bytes(b"\x01")
    with pytest.raises(ValueError, match="too short"):
        num_parameters(bad)


def test_resolve_and_list_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    monkeypatch.setenv("LOCALSERVE_MODELS_DIR", str(store))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    (store / "org--one").mkdir(parents=True)
    write_gguf(store / "org--one" / "one-Q4_K_M.gguf")
    (store / "org--two").mkdir()
    (store / "org--two" / "config.json").write_text("{}")
    (store / "org--two" / "model.safetensors").write_bytes(b"0" * 10)
    (store / "org--many").mkdir()
    for q in ("Q4", "Q8"):
        write_gguf(store / "org--many" / f"m-{q}.gguf")
    assert resolve_model(None) is None and resolve_model("default") is None
    assert resolve_model("org/one") == str(store / "org--one" / "one-Q4_K_M.gguf")
    assert resolve_model("org/two") == str(store / "org--two")
    assert resolve_model(str(store / "org--two")) == str((store / "org--two").resolve())
    with pytest.raises(ModelNotFoundError, match="several GGUF"):
        resolve_model("org/many")
    with pytest.raises(ModelNotFoundError, match="localserve pull org/none"):
        resolve_model("org/none")
    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    assert re.search(r"^default \(gemma-3-270m\)\s+gguf", out, re.M)
    assert re.search(r"^org/one\s+gguf .* localserve", out, re.M)
    assert re.search(r"^org/two\s+safetensors", out, re.M)
    assert "org/many/m-Q4.gguf" in out and "org/many/m-Q8.gguf" in out


def test_choose_files() -> None:
    st = ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
          "model.safetensors.index.json", "tokenizer.json", "README.md", "pytorch_model.bin"]
    assert choose_files(st) == sorted(set(st) - {"README.md", "pytorch_model.bin"})
    gg = ["a-Q4_K_M.gguf", "a-Q8_0.gguf", "README.md"]
    with pytest.raises(ValueError, match="--include"):
        choose_files(gg)
    assert choose_files(gg, ["*Q8*"]) == ["a-Q8_0.gguf"]
    shards = ["b-Q4-00001-of-00002.gguf", "b-Q4-00002-of-00002.gguf"]
    assert choose_files(shards) == shards
    with pytest.raises(ValueError, match=re.escape("no .safetensors or .gguf")):
        choose_files(["pytorch_model.bin", "config.json"])


# --- pull against a local stand-in for the Hub -------------------------------------------

REPOS = {
    "org/tiny": {"config.json": b'{"model_type": "llama"}', "model.safetensors": b"w" * 2048,
                 "tokenizer.json": b"{}", "README.md": b"# tiny", "model.bin": b"pickle"},
    "org/quants": {"q-Q4_K_M.gguf": b"GGUF4", "q-Q8_0.gguf": b"GGUF8"},
}
SHA = "0123456789abcdef0123456789abcdef01234567"


class HubStandIn(BaseHTTPRequestHandler):
    """Just enough of the Hub's HTTP API for huggingface_hub's download code."""

    requests: ClassVar[list[str]] = []

    def log_message(self, *args: object) -> None:
        HubStandIn.requests.append(f"{self.command} {self.path}")

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/[^/]+", path):
            files = REPOS.get(m.group(1))
            if files is None:
                return self._reply(404, b'{"error":"Repository not found"}',
                                   {"X-Error-Code": "RepoNotFound"})
            listing = [{"type": "file", "path": f, "size": len(b), "oid": SHA}
                       for f, b in files.items()]
            return self._reply(200, json.dumps(listing).encode(),
                               {"Content-Type": "application/json"})
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/[^/]+/(.+)", path):
            body = REPOS.get(m.group(1), {}).get(m.group(2))
            if body is not None:
                return self._reply(200, body, {
                    "X-Repo-Commit": SHA, "ETag": f'"{hashlib.sha256(body).hexdigest()}"'})
        self._reply(404, b'{"error":"Entry not found"}', {"X-Error-Code": "EntryNotFound"})

    do_HEAD = do_GET


@pytest.fixture
def hub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), HubStandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    HubStandIn.requests = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_pull(hub: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
              capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    monkeypatch.setenv("LOCALSERVE_MODELS_DIR", str(store))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_ENDPOINT", hub)  # the CLI's default endpoint comes from here
    code, out, err = run_cli(capsys, "pull", "org/tiny")
    assert code == 0, err
    folder = store / "org--tiny"
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == [
        "config.json", "model.safetensors", "tokenizer.json"]
    assert (folder / "model.safetensors").read_bytes() == b"w" * 2048
    assert "localserve serve org/tiny" in out
    assert resolve_model("org/tiny") == str(folder)
    assert any(r.startswith("GET /org/tiny/resolve/") for r in HubStandIn.requests)

    code, _, err = run_cli(capsys, "pull", "org/quants", "--endpoint", hub)
    assert code == 2 and "--include" in err and "q-Q8_0.gguf" in err
    code, _, err = run_cli(capsys, "pull", "org/quants", "--endpoint", hub, "--include", "*Q8*")
    assert code == 0, err
    assert [p.name for p in (store / "org--quants").glob("*.gguf")] == ["q-Q8_0.gguf"]
    assert resolve_model("org/quants") == str(store / "org--quants" / "q-Q8_0.gguf")

    code, _, err = run_cli(capsys, "pull", "org/missing", "--endpoint", hub)
    assert code == 2 and "not found" in err and "Traceback" not in err


def test_probe_sizes_the_gpu_kv_pool(capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """With the cuda backend chosen, probe prints the KV pool the GPU would get: memory
    utilization x total, less what is in use and the weights (16-bit, or the GGUF's blocks
    where the backend keeps them), in tokens of this model; and exits 1, naming fixes, when
    the weights leave nothing."""
    import localserve.backends as backends
    import localserve.platform.probe as probe_module
    from localserve.backends import Selection
    from localserve.config import default_model_path
    from localserve.platform.probe import GpuInfo

    class Cuda:
        name = "cuda"

    monkeypatch.setattr(backends, "select", lambda config, device: Selection(Cuda(), {}))
    machine = probe_module.probe(include_gpus=False)
    gib = 2**30

    def with_gpu(total: int, free: int) -> None:
        gpu = GpuInfo("nvidia", "Test GPU", total, free, (8, 9))
        monkeypatch.setattr(probe_module, "probe",
                            lambda include_gpus=True: dataclasses.replace(machine, gpus=(gpu,)))

    model = default_model_path()
    weights = 2 * num_parameters(model)
    per_token = model_facts(model).kv_bytes_per_token()
    with_gpu(8 * gib, 7 * gib)
    code, out, err = run_cli(capsys, "probe", "--gpu-memory-utilization", "0.5")
    assert code == 0, err
    pool = 4 * gib - 1 * gib - weights
    assert f"KV pool: at most {pool / gib:.1f} GiB = {int(pool // per_token):,} tokens" in out
    assert "50% of 8.0 GiB, less 1.0 GiB in use" in out
    # A small GPU: in 16-bit the weights would take over half of the memory localserve may
    # use, so the cuda backend keeps the GGUF's blocks (backends/cuda/gguf.py), as sized here.
    with_gpu(1 * gib, 1 * gib // 2)
    code, out, err = run_cli(capsys, "probe")
    assert code == 0, err
    blocks = os.path.getsize(model)
    assert blocks < weights / 1.5
    pool = 0.9 * gib - gib // 2 - blocks
    assert f"KV pool: at most {pool / gib:.1f} GiB" in out
    assert f"{blocks / gib:.2f} GiB of GGUF blocks kept as in the file" in out
    with_gpu(gib // 2, gib // 4)
    code, out, _ = run_cli(capsys, "probe")
    assert code == 1 and "KV pool: none" in out and "smaller model" in out


def test_probe_reports_device_backend_and_memory(capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # The real registry is exercised by tests/e2e; here, the command's own work and output.
    import localserve.backends as backends
    from localserve.backends import Selection

    class Fake:
        name = "cpu"

    seen = {}

    def select(config: object, device: object) -> Selection:
        seen["config"] = config
        return Selection(Fake(), {"cuda": ["no suitable device"]})  # type: ignore[arg-type]

    monkeypatch.setattr(backends, "select", select)
    code, out, err = run_cli(capsys, "probe", "--max-model-len", "4096")
    assert code == 0, err
    assert out.startswith("device: ")
    assert "backend: cpu\n  not cuda: no suitable device" in out
    assert seen["config"].model.max_model_len == 4096  # type: ignore[attr-defined]
    assert "one 4,096-token context" in out
    assert re.search(r"weights: [\d,]+ MiB", out)
    assert re.search(r"KV cache \((16|32)-bit\): [\d.,]+ KiB per token", out)
