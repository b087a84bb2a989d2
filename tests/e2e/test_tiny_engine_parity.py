"""The whole engine (scheduler, block manager, runner, sampler) vs HF greedy generate.

Tiny random Llama-3-shaped and Gemma-3-shaped models, several prompts at once with a small
token budget (chunked prefill) and a shared prefix (prefix-cache hits). On the CPU the torch
reference backend runs in fp32; on a GPU (skipped without one) the cuda backend runs in fp32
(tokens must match) and bf16 (near-tie rule).
"""

from __future__ import annotations

import pytest
import torch

from localserve import LLM, SamplingParams
from localserve.interfaces import PLACEHOLDER
from tests.helpers.near_tie import first_divergence
from tests.helpers.tiny_models import make_tiny_checkpoint

SHARED = [5, 17, 33, 40, 41, 42, 60, 61, 62, 63, 70, 71, 72, 99, 100, 101, 150, 151, 152, 153]
PROMPTS = [[*SHARED, 7, 8, 9], [*SHARED, 200, 201], [300, 301, 302, 303, 304, 305, 306],
           SHARED[:9]]
CUDA = torch.cuda.is_available()


def hf_greedy(model, prompt: list[int], n: int, device: str, dtype: torch.dtype):
    model = model.to(device=device, dtype=dtype)
    ids = torch.tensor([prompt], device=device)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             output_logits=True, return_dict_in_generate=True,
                             pad_token_id=0)
    tokens = out.sequences[0, len(prompt):].tolist()
    top = []
    for logits in out.logits:
        v, i = torch.log_softmax(logits[0].float(), -1).topk(5)
        top.append(list(zip(i.tolist(), v.tolist(), strict=True)))
    return tokens, top


def run_case(tmp_path, model_type: str, backend: str, dtype: str, n: int, strict: bool,
             overlap: bool | None = None):
    """overlap: whether the engine must use async scheduling (default: on the GPU only)."""
    ckpt = make_tiny_checkpoint(tmp_path, model_type, "safetensors", with_tokenizer=True)
    llm = LLM(str(ckpt.path), backend=backend, dtype=dtype, max_num_batched_tokens=16,
              block_size=4, num_kv_blocks=128, max_model_len=256)
    # min_tokens bans EOS like HF's min_new_tokens does, so both sides pick among the same ids.
    params = SamplingParams(max_tokens=n, min_tokens=n, temperature=0,
                            logprobs=5)
    outs = llm.generate(PROMPTS, params)
    assert llm.engine.scheduler.prefix_cache_hits > 0, "the shared prefix was not reused"
    device = "cuda" if backend == "cuda" else "cpu"
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    divergences = []
    for prompt, out in zip(PROMPTS, outs, strict=True):
        ref, ref_top = hf_greedy(ckpt.hf_model, prompt, n, device, torch_dtype)
        ours = out.outputs[0]
        if strict:
            assert ours.token_ids == ref, f"prompt {prompt[:4]}...: {ours.token_ids} != {ref}"
        else:
            at = first_divergence(ours.token_ids, [s.top_logprobs for s in ours.logprobs],
                                  ref, ref_top)
            if at is not None:
                divergences.append(at)
    llm.engine.block_manager.check_integrity([])
    assert llm.engine._overlap == (backend == "cuda" if overlap is None else overlap)
    return divergences


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_reference_backend_matches_hf(tmp_path, model_type):
    run_case(tmp_path, model_type, "reference", "float32", 16, strict=True)


def test_reference_backend_with_async_scheduling_matches_hf(tmp_path, monkeypatch):
    """The runner's placeholder path (filled from the previous step's draws), on the CPU."""
    from localserve.interfaces import RunnerCapabilities
    from localserve.runner.torch_runner import TorchModelRunner

    monkeypatch.setattr(TorchModelRunner, "capabilities", RunnerCapabilities(overlap=True))
    launched = []
    original = TorchModelRunner.launch
    monkeypatch.setattr(TorchModelRunner, "launch",
                        lambda self, s: launched.append(s) or original(self, s))
    run_case(tmp_path, "llama", "reference", "float32", 16, strict=True, overlap=True)
    assert any(PLACEHOLDER in item.token_ids for s in launched for item in s.seqs)


def recorded_pages(monkeypatch, runner_cls, make) -> list[torch.Tensor]:
    """Has `runner_cls` allocate its KV pages with `make(runner, shape)`, recording them."""
    made: list[torch.Tensor] = []
    monkeypatch.setattr(runner_cls, "_empty_cache", lambda self, shape: made.append(
        make(self, shape)) or made[-1])
    return made


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs an NVIDIA/AMD GPU (runs on the H100 benchmark box)")
@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_cuda_backend_matches_hf_fp32(tmp_path, monkeypatch, model_type):
    """On the cuda runner's own pages, stored head by head (kernels/triton/cache.py)."""
    from localserve.backends.cuda.runner import CudaModelRunner

    pages = recorded_pages(monkeypatch, CudaModelRunner, CudaModelRunner._empty_cache)
    run_case(tmp_path, model_type, "cuda", "float32", 64, strict=True)
    # (The tiny Gemma has one KV head: both layouts are then the same, contiguous one.)
    assert pages and (pages[0].shape[2] == 1 or not pages[0].is_contiguous())


def test_heads_major_pages_match_hf(tmp_path, monkeypatch):
    """The reference runner on pages stored head by head, the cuda runner's layout."""
    pytest.importorskip("triton")
    from localserve.kernels.triton.cache import kv_cache_pages
    from localserve.runner.torch_runner import TorchModelRunner

    pages = recorded_pages(monkeypatch, TorchModelRunner, lambda self, shape: kv_cache_pages(
        shape, self.kv_dtype, self.device, heads_major=True))
    run_case(tmp_path, "llama", "reference", "float32", 16, strict=True)
    assert pages and not pages[0].is_contiguous()


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs an NVIDIA/AMD GPU (runs on the H100 benchmark box)")
@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_cuda_backend_matches_hf_bf16_near_tie(tmp_path, model_type):
    divergences = run_case(tmp_path, model_type, "cuda", "bfloat16", 64, strict=False)
    print(f"{model_type} bf16: divergences at {divergences}")


def test_shutdown_frees_the_model(tmp_path):
    """The engine freezes the GC at start-up; shutdown must still let the weights go (a
    leaked model kept a second engine's KV pool 16 GB smaller on the GPU)."""
    import gc
    import weakref

    ckpt = make_tiny_checkpoint(tmp_path, "llama", "safetensors", with_tokenizer=True)
    with LLM(str(ckpt.path), backend="reference", num_kv_blocks=16, block_size=4) as llm:
        llm.generate([PROMPTS[0]], SamplingParams(max_tokens=2, temperature=0))
        model = weakref.ref(llm.engine.runner.model)
        runner = weakref.ref(llm.engine.runner)
    del llm
    gc.collect()
    assert model() is None and runner() is None
