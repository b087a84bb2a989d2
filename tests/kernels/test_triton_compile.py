"""Compile every Triton kernel for real GPU targets on a machine without a GPU.

The interpreter runs kernels as NumPy code, so it cannot catch what only the GPU compiler sees
(layouts, dot shapes, a type that does not lower, register spills). Here each public wrapper is
called in interpreter mode with model-sized shapes, but its launches are recorded instead of
run; a subprocess without TRITON_INTERPRET then compiles each recorded launch, specialised as
the JIT would (Triton's own argument specialisation), for each target of TARGETS: the H100/H200
(sm_90) and RTX 50xx (sm_120), both with programmatic dependent launch as the wrappers launch
there when asked, RTX 40xx and 30xx (sm_89, sm_86), a Turing card (sm_75, whose models run in
fp16: no bf16 there), AMD MI300 (gfx942) and RDNA3 Radeons (gfx1100); CUDA builds go through
the ptxas bundled with Triton.
No build may spill registers to memory, except head_dim-256 attention on gfx1100, which spills
whatever the tiles (a known limit, bounded below).
With a GPU present the other test files compile for the real device and this one is skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

if torch.cuda.is_available():
    pytest.skip("a GPU is present: the kernel tests compile for it", allow_module_level=True)
os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton")

from localserve.kernels.triton import (  # noqa: E402
    act_and_mul,
    activation,
    attention,
    cache,
    gemv,
    gguf,
    gguf_gemv,
    gguf_q8,
    norm,
    paged_attention,
    quantize,
    rms_norm,
    rope_and_cache,
    rope_cache,
    rotary,
    rotary_embedding,
    sampling,
    vector_gemv,
    write_kv,
)
from localserve.kernels.triton._common import arch_override, pdl_override  # noqa: E402
from localserve.kernels.triton.testing import (  # noqa: E402
    Launch,
    make_paged_batch,
    recorded_launches,
)
from localserve.quant.gguf import row_bytes  # noqa: E402

PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
# (module, attribute) of every kernel object a wrapper launches.
KERNELS = [(attention, "paged_attention_kernel"), (attention, "reduce_splits_kernel"),
           (cache, "_write_kv_kernel"), (norm, "_rms_norm_kernel"),
           (rotary, "_rotary_kernel"), (activation, "_act_and_mul_kernel"),
           (gemv, "_gemv_kernel"), (vector_gemv, "_vector_gemv_kernel"),
           (rope_cache, "_rope_cache_kernel"),
           (sampling, "_gumbel_argmax_kernel"), (sampling, "_pick_first_max_kernel"),
           (gguf, "_gguf_matmul_kernel"), (gguf, "_gguf_dequant_kernel"),
           (gguf_gemv, "_gguf_gemv_kernel"), (quantize, "_quantize_q8_kernel"),
           (gguf_q8, "_gguf_q8_kernel")]


# Shared memory a program may use on each target (the GPUs refuse to launch a kernel needing more):
# H100 227 KB, RTX 30xx/40xx/50xx 99 KB, Turing 64 KB, AMD LDS 64 KB per workgroup.
SHARED_LIMIT = {"sm_90": 232_448, "sm_120": 101_376, "sm_89": 101_376, "sm_86": 101_376,
                "sm_75": 65_536, "gfx942": 65_536, "gfx1100": 65_536}
# name -> (backend, arch, warp size, launch with PDL, the half-precision dtype its models use);
# the wrappers choose their launches as for the target (`_common.gpu_arch`).
TARGETS = {"sm_90": ("cuda", 90, 32, True, torch.bfloat16),
           "sm_120": ("cuda", 120, 32, True, torch.bfloat16),
           "sm_89": ("cuda", 89, 32, False, torch.bfloat16),
           "sm_86": ("cuda", 86, 32, False, torch.bfloat16),
           "sm_75": ("cuda", 75, 32, False, torch.float16),
           "gfx942": ("hip", "gfx942", 64, False, torch.bfloat16),
           "gfx1100": ("hip", "gfx1100", 32, False, torch.bfloat16)}


def _spec(launch: Launch, target: str) -> dict:
    """A recorded launch as the JIT would compile it: Triton's own specialisation decides
    which ints are constants or multiples of 16 and which pointers are aligned."""
    names = launch.kernel.arg_names
    signature, constexprs, divisible = {}, {}, []
    for i, (name, (kind, attr)) in enumerate(zip(names, launch.specialization, strict=True)):
        signature[name] = kind
        if kind == "constexpr":
            constexprs[name] = attr
        elif attr == "D":
            divisible.append(i)
    return {"module": launch.kernel.fn.__module__, "name": launch.name,
            "signature": signature, "constexprs": constexprs, "divisible": divisible,
            "options": launch.options, "target": target, "gpu": list(TARGETS[target][:3])}


@contextlib.contextmanager
def _record_launches(target: str) -> Iterator[list[Launch]]:
    _, _, _, pdl, half = TARGETS[target]
    with pdl_override(pdl), arch_override(target), recorded_launches(*KERNELS) as launches:
        _launch_every_kernel(half)
        yield launches


def _launch_every_kernel(half: torch.dtype) -> None:
    """The model-sized launches, in `half` (bf16, or fp16 for GPUs without bf16) and fp32."""
    cpu = torch.device("cpu")
    # Attention: Llama-3-8B decode (split-KV), Qwen3 decode of many sequences (unsplit),
    # prefill, head_dim 256 with window + soft cap, fp16 head_dim 80, fp32 (exact FMA dots) at
    # head_dim 64 and 256, MQA.
    cases = [([1] * 8, [4096] * 8, 32, 8, 128, half, None, None),
             ([1] * 256, [64] * 256, 16, 8, 128, half, None, None),  # unsplit decode
             ([2048], [2048], 32, 8, 128, half, None, None),
             ([300, 1], [800, 900], 16, 8, 256, half, 4096, 50.0),
             ([64, 1], [64, 300], 32, 32, 80, torch.float16, None, None),
             ([5, 1], [9, 70], 8, 2, 64, torch.float32, 16, None),
             ([3, 1], [20, 40], 8, 2, 256, torch.float32, None, 30.0),
             ([1] * 4, [2048] * 4, 32, 1, 128, half, None, None)]
    for q_lens, seq_lens, nh, kvh, hd, dtype, window, cap in cases:
        b = make_paged_batch(q_lens, seq_lens, nh, kvh, hd, 16, dtype, cpu, poison_unused=False)
        paged_attention(*b.args(), hd ** -0.5, window, cap, max_query_len=b.max_query_len,
                        max_seq_len=b.max_seq_len)
    kv = torch.empty(64, 8, 128, dtype=half)
    k_cache = torch.empty(8, 16, 8, 128, dtype=half)
    write_kv(kv, kv, k_cache, k_cache.clone(), torch.arange(64))
    for hidden in (4096, 20000):
        x = torch.empty(8, hidden, dtype=half)
        rms_norm(x, torch.empty(hidden, dtype=half), 1e-6, x.clone())
    rms_norm(torch.empty(8, 24, 128, dtype=half)[:, :16], torch.empty(128, dtype=half), 1e-6)
    q, k = torch.empty(8, 32, 128, dtype=half), torch.empty(8, 8, 128, dtype=half)
    rotary_embedding(torch.arange(8), q, k, torch.empty(64, 64))  # partial: tail copied
    rotary_embedding(torch.arange(8), q, k, torch.empty(64, 128), inplace=True)
    for act in ("silu", "gelu_tanh"):
        act_and_mul(torch.empty(8, 2 * 14336, dtype=half), act)
    # The same writing their outputs in int8 too, for the int8 GGUF kernel (not on Turing).
    if gguf_q8.int8_dots(torch.device("cpu")):
        x = torch.empty(8, 4096, dtype=half)
        norm.rms_norm_q8(x, torch.empty(4096, dtype=half), 1e-6, x.clone())
        for act in ("silu", "gelu_tanh"):
            activation.act_and_mul_q8(torch.empty(8, 2 * 14336, dtype=half), act)
    # Decode gemv: Llama-3-8B's qkv, an uneven K with bias, fp32 (exact dots).
    gemv.gemv(torch.empty(1, 4096, dtype=half), torch.empty(6144, 4096, dtype=half))
    gemv.gemv(torch.empty(8, 1000, dtype=half), torch.empty(64, 1000, dtype=half),
              torch.empty(64, dtype=half))
    gemv.gemv(torch.empty(2, 512), torch.empty(64, 512))
    # One-row decode through the vector gemv: Llama-3-8B's q/k/v, down and LM head, Gemma 3
    # 270M's 640-wide rows with bias.
    row = torch.empty(1, 4096, dtype=half)
    vector_gemv.vector_gemv(row, torch.empty(6144, 4096, dtype=half))
    vector_gemv.vector_gemv(torch.empty(1, 14336, dtype=half), torch.empty(4096, 14336, dtype=half))
    vector_gemv.vector_gemv(row, torch.empty(128256, 4096, dtype=half))
    vector_gemv.vector_gemv(torch.empty(1, 640, dtype=half), torch.empty(1024, 640, dtype=half),
                            torch.empty(1024, dtype=half))
    # q/k norm + rotary + KV write: Llama-3-8B (no norm), Gemma-3 head_dim 256 with norm and
    # partial rotary.
    positions = torch.arange(8)
    for nh, kvh, hd, rot, norm_w in ((32, 8, 128, 128, None), (8, 4, 256, 128, 256)):
        q, kv = torch.empty(8, nh, hd, dtype=half), torch.empty(8, kvh, hd, dtype=half)
        k_cache = torch.empty(4, 16, kvh, hd, dtype=half)
        norms = (None, None) if norm_w is None else (torch.empty(norm_w),) * 2
        rope_and_cache(positions, q, kv, kv, torch.empty(64, rot), k_cache, k_cache.clone(),
                       positions, *norms)
    # GGUF blocks: every type at Llama-3-8B's q/k/v shape, 1 row (16-row blocks, 32 columns),
    # 32 rows (32 x 64 tiles), fp32 (exact dots); rows of the embedding by id; the one-row
    # kernel.
    for qtype in sorted(gguf.SUPPORTED_TYPES):
        raw = torch.empty(6144, row_bytes(qtype, 4096), dtype=torch.uint8)
        for x in (torch.empty(1, 4096, dtype=half), torch.empty(32, 4096, dtype=half),
                  torch.empty(2, 4096)):
            gguf.gguf_matmul(x, raw, qtype)
        gguf.gguf_dequant(raw, qtype, 4096, half, torch.zeros(8, dtype=torch.int64))
        # One row: the down projection's K, gate/up's N (q/k/v's above), fp32 in shares.
        down = torch.empty(4096, row_bytes(qtype, 14336), dtype=torch.uint8)
        gguf_gemv.gguf_gemv(torch.empty(1, 14336, dtype=half), down, qtype)
        gguf_gemv.gguf_gemv(row, torch.empty(28672, raw.shape[1], dtype=torch.uint8), qtype)
        gguf_gemv.gguf_gemv(row, raw, qtype)
        gguf_gemv.gguf_gemv(torch.empty(1, 4096), raw, qtype, block_n=16, splits=4)
        # Int8 dots for 2-32 rows (16- and 32-row tiles), in shares (o/down-sized layers);
        # not on Turing (gguf_matmul serves it).
        for m in (4, 32) if gguf_q8.int8_dots(row.device) else ():
            gguf_q8.gguf_q8_matmul(torch.empty(m, 4096, dtype=half), raw, qtype)
            gguf_q8.gguf_q8_matmul(torch.empty(m, 14336, dtype=half), down, qtype)
    # Fused sampling over a Qwen3-sized vocabulary in half precision and fp32.
    for dtype in (half, torch.float32):
        sampling.gumbel_argmax(torch.empty(4, 151936, dtype=dtype), torch.zeros(4),
                               torch.zeros(4, dtype=torch.int64))


# Runs in a fresh interpreter without TRITON_INTERPRET, so `triton.jit` builds real kernels.
_COMPILER = r"""
import importlib, json, os, re, subprocess, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

specs, ptxas = json.load(sys.stdin), sys.argv[1]
results = []
for spec in specs:
    target_name, (backend, arch, warp_size) = spec["target"], spec["gpu"]
    target = GPUTarget(backend, arch, warp_size)
    fn = getattr(importlib.import_module(spec["module"]), spec["name"])
    names = fn.arg_names
    src = ASTSource(fn=fn, signature=spec["signature"],
                    constexprs={(names.index(k),): v for k, v in spec["constexprs"].items()},
                    attrs={(i,): [["tt.divisibility", 16]] for i in spec["divisible"]})
    result = {"kernel": spec["name"], "target": target_name, "constexprs": spec["constexprs"]}
    try:
        compiled = triton.compile(src, target=target, options=spec["options"])
        result["shared"] = compiled.metadata.shared
        if backend == "cuda":
            with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
                f.write(compiled.asm["ptx"])
            gpu_name = f"sm_{arch}" + ("a" if arch == 90 else "")
            info = subprocess.run([ptxas, "-v", f"--gpu-name={gpu_name}", f.name, "-o",
                                   os.devnull], capture_output=True, text=True).stderr
            os.unlink(f.name)
            spills = [int(n) for n in re.findall(r"(\d+) bytes spill stores", info)]
            regs = [int(n) for n in re.findall(r"Used (\d+) registers", info)]
            result.update(spill_bytes=sum(spills), registers=max(regs, default=-1),
                          griddepcontrol="griddepcontrol.wait" in compiled.asm["ptx"],
                          launch_pdl=compiled.metadata.launch_pdl)
        else:  # AMD: registers spilled to scratch memory (SGPRs spill to VGPR lanes: cheap)
            spills = re.findall(r"\.vgpr_spill_count:\s*(\d+)", compiled.asm["amdgcn"])
            regs = re.findall(r"\.vgpr_count:\s*(\d+)", compiled.asm["amdgcn"])
            result.update(spill_bytes=sum(map(int, spills)),
                          registers=max(map(int, regs), default=-1))
        result["ok"] = True
    except Exception as e:
        result.update(ok=False, error=f"{type(e).__name__}: {e}"[:2000])
    results.append(result)
json.dump(results, sys.stdout)
"""


@pytest.fixture(scope="module")
def compiled() -> list[dict]:
    if not PTXAS.exists():
        pytest.skip(f"this Triton wheel has no bundled ptxas ({PTXAS})")
    specs = []
    for target in TARGETS:
        with _record_launches(target) as launches:
            specs += [_spec(launch, target) for launch in launches]
    assert {s["name"] for s in specs} == {attr for _, attr in KERNELS}
    # Same kernel, same constants, same signature: compile once.
    unique = list({json.dumps(s, sort_keys=True): s for s in specs}.values())
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _COMPILER, str(PTXAS)], input=json.dumps(unique),
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def test_every_launch_compiles_for_nvidia_and_amd(compiled):
    failures = [f"{r['kernel']} {r['target']} {r['constexprs']}: {r['error']}"
                for r in compiled if not r["ok"]]
    assert not failures, "\n".join(failures)
    assert {r["target"] for r in compiled} == set(TARGETS)


# gfx1100 spills 272-569 VGPRs at head_dim 256 with every tile tried (16-64 rows x 16-32 keys,
# 4-8 warps; the chosen 16 x 16 spills least): Triton 3.6's RDNA3 code for that width.
RDNA_HEAD_DIM_256_SPILL_LIMIT = 300


def test_no_register_spills(compiled):
    spilling = []
    for r in compiled:
        if not r["ok"] or not r["spill_bytes"]:
            continue
        known = (r["target"] == "gfx1100" and r["kernel"] == "paged_attention_kernel"
                 and r["constexprs"]["HEAD_DIM_PAD"] == 256
                 and r["spill_bytes"] <= RDNA_HEAD_DIM_256_SPILL_LIMIT)
        if not known:
            unit = "B" if TARGETS[r["target"]][0] == "cuda" else "VGPRs"
            spilling.append(f"{r['kernel']} {r['target']} {r['constexprs']}: "
                            f"{r['spill_bytes']} {unit} spilled, {r['registers']} registers")
    assert not spilling, "\n".join(spilling)


def test_cuda_builds_wait_for_the_previous_kernel(compiled):
    """Every sm_90/sm_120 build is a PDL launch and starts with griddepcontrol.wait: a PDL launch
    without the wait would read its inputs while the previous kernel still writes them."""
    cuda = [r for r in compiled if TARGETS[r["target"]][3] and r["ok"]]
    assert cuda
    missing = [f"{r['kernel']} {r['constexprs']}" for r in cuda
               if not (r["griddepcontrol"] and r["launch_pdl"])]
    assert not missing, "\n".join(missing)


def test_shared_memory_fits_every_target(compiled):
    """A kernel needing more shared memory than the GPU has fails at launch (OutOfResources):
    the gemv's 4 stages took 72 KB in bf16, more than an MI300's 64 KB of LDS, and 144 KB in
    fp32, more than an RTX 40xx's 99 KB, before it sized its stages to the target."""
    over = [f"{r['kernel']} {r['target']} {r['constexprs']}: {r['shared']} B > "
            f"{SHARED_LIMIT[r['target']]}" for r in compiled
            if r["ok"] and r["shared"] > SHARED_LIMIT[r["target"]]]
    assert not over, "\n".join(over)
