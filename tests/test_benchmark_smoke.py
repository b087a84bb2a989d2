"""The GPU benchmark scripts run end to end on the CPU (their --smoke modes), so a broken
script is found here, not in a device call that costs minutes of GPU time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def test_gpu_bench_smoke_with_variants(tmp_path):
    """The reference backend at tiny shapes, with the variants that also run there."""
    out = tmp_path / "bench.json"
    variants = ["a:gc700", "a:splitkeys1024", "a:tokens8192", "a:prefill128", "a:gemvall"]
    text = run("gpu_bench.py", "--smoke", "--only", "d", "a", *variants, "--json", str(out))
    runs = json.loads(out.read_text())["runs"]
    assert [r["workload"] for r in runs] == ["d", "a", *variants]
    assert all(r["a"]["decode_tok_s"] > 0 for r in runs[1:])
    assert "[splitkeys1024]" in text and "[tokens8192]" in text


def test_triton_kernels_smoke_decode_sections():
    pytest.importorskip("triton")
    text = run("triton_kernels.py", "--smoke", "--only", "decode_layout,decode_paths")
    assert "[heads-major pages]" in text and "[general path]" in text


def test_triton_kernels_smoke_session_9_sections():
    pytest.importorskip("triton")
    text = run("triton_kernels.py", "--smoke", "--only", "decode_order,prefill_chunk")
    assert "[longest first]" in text and "[BM=64 BN=32 w=4 s=2]" in text


def test_triton_kernels_smoke_gated_gemm():
    """The fused SiLU-and-mul GEMM experiment is checked against the reference (a failed check
    exits 1; under --smoke a kernel error fails the run)."""
    pytest.importorskip("triton")
    text = run("triton_kernels.py", "--smoke", "--only", "gated_gemm")
    assert "gated GEMM TMA" in text and "cuBLAS + act_and_mul" in text


def test_triton_kernels_smoke_overlap():
    pytest.importorskip("triton")
    text = run("triton_kernels.py", "--smoke", "--only", "overlap")
    assert "attention and GEMMs ran" in text


def test_gguf_gpu_bench_smoke():
    """The GGUF kernel table's checks (a wrong product exits 1) and the random Q4_K_M GGUF
    of the end-to-end run, read back by the CPU backend."""
    pytest.importorskip("triton")
    text = run("gguf_gpu_bench.py", "--smoke")
    assert "Q6_K tiny 32 rows" in text and "random Q4_K_M GGUF" in text
    assert "repacked Q4_K tiny 20 rows" in text
    assert "fused RMSNorm + residual 3 rows" in text and "fused SiLU-and-mul 3 rows" in text


def test_c_step_model_prefers_admitting_everything():
    """docs/benchmarks.md (session 19) quotes the model: capping (c)'s running batch is slower,
    and finer graph buckets pad fewer rows."""
    sys.path.insert(0, str(BENCH))
    try:
        import c_step_model as model
    finally:
        sys.path.remove(str(BENCH))
    whole, _ = model.simulate(1024)
    assert all(model.simulate(cap)[0] > whole for cap in (448, 256))
    assert model.padded_share(8) > model.padded_share(16) > model.padded_share(32) > 0
    assert "req/s" in run("c_step_model.py")


def test_triton_kernels_smoke_gemv_sweep():
    """The gemv section checks the batched and the one-row gemv at every swept tile against
    the reference (a failed check exits 1)."""
    pytest.importorskip("triton")
    text = run("triton_kernels.py", "--smoke", "--only", "gemv", "--sweep")
    assert "vector_gemv" in text and "BN=8 BK=64 w=4 s=2" in text


def test_gemm_shapes_projections_of_llama():
    sys.path.insert(0, str(BENCH))
    try:
        from gemm_shapes import LLAMA, projections
    finally:
        sys.path.remove(str(BENCH))
    cfg = json.loads(Path(LLAMA).read_text())
    assert projections(cfg) == [("qkv", 6144, 4096), ("o", 4096, 4096),
                                ("gate_up", 28672, 4096), ("down", 4096, 14336),
                                ("lm_head", 128256, 4096)]


def test_gpu_server_check_on_the_cpu_backend():
    """The device call's server check (gpu_session.sh server), run here on the cpu backend."""
    text = run("gpu_server_check.py", "--backend", "cpu")
    assert "server on backend cpu: 12 of 12 checks passed" in text


def test_gpu_server_check_on_the_default_model():
    """`--model default`: a bare `localserve up`, with the tokenizer and the first greedy tokens
    checked against the HF goldens through the server."""
    text = run("gpu_server_check.py", "--backend", "cpu", "--model", "default")
    assert "server on backend cpu: 14 of 14 checks passed" in text
    assert "ok   greedy = HF golden, 8 tokens" in text
