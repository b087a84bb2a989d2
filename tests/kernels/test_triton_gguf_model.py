"""A GGUF model on the cuda backend's GGUF path (backends/cuda/gguf.py) computes what the same
file dequantized at load computes.

Tiny Llama and Gemma 3 GGUFs with llama.cpp's type mix (Q8_0, and Q5_0 for v and down): the
layers keep their blocks and run through the Triton GGUF kernels (the interpreter on the CPU),
projections of one type fuse, the tied LM head shares the embedding's blocks. Against: the
file dequantized by the loader, fused as float weights. fp32, reference attention on both
sides. A prefill of more than gguf_q8.MAX_ROWS tokens (W dequantized for cuBLAS) and a
one-token step (the one-row kernel) to 1e-5 of the largest logit (only the sums' order
differs); a step of a few tokens (the int8 kernel, x rounded to int8) to Q8_STEP_TOL.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

pytest.importorskip("triton")

from localserve.backends.cuda.gguf import (
    TritonGGUFEmbeddingMethod,
    TritonGGUFLinearMethod,
    cuda_fused_linear,
    install_gguf_methods,
)
from localserve.config import ModelConfig
from localserve.kernels.triton.gguf_q8 import MAX_ROWS
from localserve.kernels.triton.testing import device
from localserve.layers.embedding import VocabEmbedding
from localserve.layers.fusion import fuse_projections
from localserve.layers.linear import Linear, UnquantizedMethod
from localserve.loader import load_model
from localserve.quant.gguf import dequantize, set_quantized_weight
from tests.helpers.gguf_blocks import random_weight
from tests.helpers.paged import Chunk, PagedDriver
from tests.helpers.tiny_models import make_tiny_checkpoint

DEV = device()


def logits(loaded, ids: list[int], *then: list[int]) -> list[torch.Tensor]:
    """Logits of a prefill of `ids`, then of each chunk of `then` in turn (the same
    sequence)."""
    driver = PagedDriver(loaded.model, loaded.arch, device=DEV)
    blocks = driver.alloc(len(ids) + sum(map(len, then)))
    out = [driver.step([Chunk(ids, 0, blocks)]).cpu()]
    start = len(ids)
    for chunk in then:
        out.append(driver.step([Chunk(chunk, start, blocks)]).cpu())
        start += len(chunk)
    return out


PROMPT = [(3 ** i) % 251 for i in range(MAX_ROWS + 8)]  # a prefill past the int8 kernel
Q8_STEP_TOL = 2e-2  # of the largest logit: x's int8 rounding through two layers


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_gguf_blocks_compute_what_the_dequantized_model_does(tmp_path, monkeypatch,
                                                            model_type):
    monkeypatch.setenv("LOCALSERVE_GGUF_BLOCKS", "1")
    ckpt = make_tiny_checkpoint(tmp_path, model_type, "gguf-q8_0")
    config = ModelConfig(model=str(ckpt.path))
    dense = load_model(config, DEV, torch.float32)
    fuse_projections(dense.model)
    want = logits(dense, PROMPT, [5], [7, 11, 13])

    blocks = load_model(config, DEV, torch.float32, keep_quantized=True)
    kept, dequantized = install_gguf_methods(blocks.model)
    assert kept > 0 and dequantized == 0
    layers = blocks.arch.num_layers
    fused = fuse_projections(blocks.model, cuda_fused_linear)
    assert fused == layers  # gate/up (both Q8_0); q/k/v not, v being Q5_0
    methods = [type(m.method) for m in blocks.model.modules() if hasattr(m, "qweight")]
    assert set(methods) == {TritonGGUFLinearMethod, TritonGGUFEmbeddingMethod}
    got = logits(blocks, PROMPT, [5], [7, 11, 13])
    for step, tol in zip(("prefill", "one token", "three tokens"), (1e-5, 1e-5, Q8_STEP_TOL),
                         strict=True):
        g, w = got.pop(0), want.pop(0)
        err = (g - w).abs().max().item() / w.abs().max().item()
        assert err <= tol, f"{step}: relative max error {err:.3g}"


class CountedLaunches:
    """Stands in for a kernel object: counts its launches, then launches it."""

    def __init__(self, kernel) -> None:
        self.kernel, self.count = kernel, 0

    def __getitem__(self, grid):
        self.count += 1
        return self.kernel[grid]


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_layer_inputs_are_rounded_to_int8_once(tmp_path, monkeypatch, model_type):
    """With the model's shared Int8Activations and `gguf_layer_ops` (the RMSNorms and the
    activation write their outputs in int8 too; q, k and v, kept apart by their types, read
    one quantization) steps of three tokens give the same logits, bit for bit, as every
    matmul quantizing its own input, with one quantize launch a layer (o's input, from
    attention) instead of six (q, k, v, o, gate|up, down) and none for the LM head."""
    from localserve.backends.cuda.gguf import gguf_layer_ops
    from localserve.backends.cuda.ops import triton_layer_ops
    from localserve.kernels.triton import quantize
    from localserve.layers.ops import install_layer_ops

    monkeypatch.setenv("LOCALSERVE_GGUF_BLOCKS", "1")
    config = ModelConfig(model=str(make_tiny_checkpoint(tmp_path, model_type, "gguf-q8_0").path))
    got, launches = {}, {}
    for shared in (False, True):
        loaded = load_model(config, DEV, torch.float32, keep_quantized=True)
        install_gguf_methods(loaded.model)
        ops = triton_layer_ops()
        if shared:
            ops = gguf_layer_ops(loaded.model, ops)
        else:
            for module in loaded.model.modules():
                if isinstance(getattr(module, "method", None), TritonGGUFLinearMethod):
                    module.method = TritonGGUFLinearMethod(DEV)  # an Int8Activations of its own
        install_layer_ops(loaded.model, ops)
        fuse_projections(loaded.model, cuda_fused_linear)
        counted = CountedLaunches(quantize._quantize_q8_kernel)
        monkeypatch.setattr(quantize, "_quantize_q8_kernel", counted)
        got[shared] = logits(loaded, [3, 9, 27], [7, 11, 13])
        launches[shared] = counted.count
    layers = loaded.arch.num_layers
    for want, have in zip(got[False], got[True], strict=True):
        assert torch.equal(want, have)
    # Two steps; the tied LM head reads the final norm's output (every token's logits here):
    # one more launch a step unshared, none shared.
    assert (launches[False], launches[True]) == (2 * (6 * layers + 1), 2 * layers)


@pytest.mark.parametrize("setting", ["0", None], ids=["off", "default"])
def test_blocks_off_dequantizes_every_layer(tmp_path, monkeypatch, setting):
    """Blocks off, or auto with no sizes to go by: the raw blocks become exactly the float
    model that loading with dequantization gives (same weights, same logits, bit for bit)."""
    if setting is None:
        monkeypatch.delenv("LOCALSERVE_GGUF_BLOCKS", raising=False)
    else:
        monkeypatch.setenv("LOCALSERVE_GGUF_BLOCKS", setting)
    ckpt = make_tiny_checkpoint(tmp_path, "gemma3_text", "gguf-q8_0")
    config = ModelConfig(model=str(ckpt.path))
    blocks = load_model(config, DEV, torch.float32, keep_quantized=True)
    kept, dequantized = install_gguf_methods(blocks.model)
    assert kept == 0 and dequantized > 0
    assert not any(hasattr(m, "qweight") for m in blocks.model.modules())
    dense = load_model(config, DEV, torch.float32)
    ids = [3, 9, 27, 81, 243, 7, 11]
    assert torch.equal(logits(blocks, ids)[0], logits(dense, ids)[0])


def test_types_the_kernels_do_not_read_are_dequantized_once(monkeypatch):
    """A Q4_1 layer gets a float weight (the gguf package's values) and the float method; a
    tied pair shares one; a Q8_0 layer keeps its blocks."""
    monkeypatch.setenv("LOCALSERVE_GGUF_BLOCKS", "1")
    rng = np.random.default_rng(0)
    model = torch.nn.ModuleDict({
        "embed": VocabEmbedding(16, 64), "head": Linear(64, 16), "kept": Linear(64, 8)})
    q41 = torch.from_numpy(random_weight(Q.Q4_1, 16, 64, rng)).to(DEV)
    set_quantized_weight(model["embed"], q41, Q.Q4_1, torch.float32)
    set_quantized_weight(model["head"], q41, Q.Q4_1, torch.float32)
    q80 = torch.from_numpy(random_weight(Q.Q8_0, 8, 64, rng)).to(DEV)
    set_quantized_weight(model["kept"], q80, Q.Q8_0, torch.float32)
    assert install_gguf_methods(model) == (1, 2)
    head = model["head"]
    assert type(head.method) is UnquantizedMethod and not hasattr(head, "qweight")
    assert head.weight is model["embed"].weight
    assert torch.equal(head.weight.cpu(), dequantize(q41, Q.Q4_1))
    assert type(model["kept"].method) is TritonGGUFLinearMethod
    ids = torch.tensor([0, 15, 4], device=DEV)
    assert torch.equal(model["embed"](ids).cpu(), dequantize(q41, Q.Q4_1)[[0, 15, 4]])


@pytest.mark.parametrize("setting,dequantized,budget,keep", [
    (None, 10, 30, False),   # auto: fits in half of the budget -> dequantize (faster batches)
    (None, 16, 30, True),    # auto: would take over half -> keep the blocks
    (None, None, None, False),  # auto, sizes unknown (a bare install) -> dequantize
    ("auto", 16, 30, True),
    ("1", 1, 1000, True),
    ("0", 1000, 1, False)])
def test_blocks_or_floats_by_setting_and_size(monkeypatch, setting, dequantized, budget, keep):
    from localserve.backends.cuda.gguf import keeps_gguf_blocks

    if setting is None:
        monkeypatch.delenv("LOCALSERVE_GGUF_BLOCKS", raising=False)
    else:
        monkeypatch.setenv("LOCALSERVE_GGUF_BLOCKS", setting)
    assert keeps_gguf_blocks(dequantized, budget) is keep


def test_a_bad_blocks_setting_names_the_choices(monkeypatch):
    from localserve.backends.cuda.gguf import keeps_gguf_blocks

    monkeypatch.setenv("LOCALSERVE_GGUF_BLOCKS", "yes")
    with pytest.raises(ValueError, match="must be one of auto, 1, 0; got 'yes'"):
        keeps_gguf_blocks(1, 2)


def test_turing_keeps_the_float_kernel_for_a_few_rows():
    """sm_75 has no int8 dots in Triton: a few rows go through gguf_linear (floats), whose
    result is x @ W^T to fp32 rounding, not x rounded to int8."""
    from localserve.kernels.triton._common import arch_override
    from localserve.kernels.triton.gguf_q8 import gguf_q8_matmul

    rng = np.random.default_rng(0)
    layer = Linear(256, 8)
    raw = torch.from_numpy(random_weight(Q.Q4_K, 8, 256, rng)).to(DEV)
    set_quantized_weight(layer, raw, Q.Q4_K, torch.float32)
    x = torch.randn(3, 256, device=DEV)
    exact = x @ dequantize(raw, Q.Q4_K).to(DEV).T
    with arch_override("sm_75"):
        layer.method = TritonGGUFLinearMethod(DEV)
        y = layer(x)
        with pytest.raises(ValueError, match=r"needs int8 dots.*sm_75"):
            gguf_q8_matmul(x, raw, Q.Q4_K)
        assert layer(x[:0]).shape == (0, 8)  # no rows: not the int8 kernel either
    assert (y - exact).abs().max() <= 1e-5 * exact.abs().max()
    layer.method = TritonGGUFLinearMethod(DEV)  # the interpreter: int8 dots
    assert (layer(x) - exact).abs().max() > 1e-4 * exact.abs().max()  # x rounded to int8


def test_split_k_scratch_is_sized_before_any_launch(monkeypatch):
    """CUDA-graph capture must not allocate: after reserve_gguf_scratch, steps of 1, 16 and
    32 rows (K in shares for a layer of few rows) find the shared scratch big enough."""
    from localserve.backends.cuda.gguf import reserve_gguf_scratch
    from localserve.kernels.triton import gguf_gemv, gguf_q8

    monkeypatch.setattr(gguf_gemv, "_SCRATCH", {})
    k, n = 2048, 64
    rng = np.random.default_rng(0)
    layer = Linear(k, n)
    set_quantized_weight(layer, torch.from_numpy(random_weight(Q.Q4_K, n, k, rng)).to(DEV),
                         Q.Q4_K, torch.float32)
    layer.method = TritonGGUFLinearMethod(DEV)
    block_m, block_n, parts, _, _ = gguf_q8.tile_for(Q.Q4_K, 32, DEV)
    assert gguf_q8.split_for(32, n, k, block_m, block_n, parts, DEV) > 1  # needs the scratch
    reserve_gguf_scratch(torch.nn.ModuleDict({"layer": layer}))
    (reserved,) = gguf_gemv._SCRATCH.values()
    for rows in (1, 16, 32):
        layer(torch.randn(rows, k, device=DEV))
        (scratch,) = gguf_gemv._SCRATCH.values()  # one, whether DEV is "cuda" or "cuda:0"
        assert all(a is b for a, b in zip(scratch, reserved, strict=True))
