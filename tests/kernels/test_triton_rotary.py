"""rotary_embedding (Triton) against kernels/reference.py: NeoX style, full and partial rotary.

Interpreter (CPU) at small shapes without a GPU (fp32, fp16), model-sized shapes on one.
New outputs start NaN; the in-place mode must equal the out-of-place result.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from localserve.kernels import reference
from localserve.kernels.triton import rotary_embedding
from localserve.kernels.triton._common import poisoned_outputs
from localserve.kernels.triton.testing import (
    ELEMENTWISE_TOL,
    device,
    full_shapes,
    rel_error,
)

FULL = full_shapes()
DEV = device()
DTYPES = [torch.float16, torch.bfloat16] if FULL else [torch.float32, torch.float16]
# (num_heads, num_kv_heads, head_dim, rotary_dim): Llama, Qwen3-0.6B, partial (GPT-NeoX/Phi),
# and more heads than one program's head block (16 at rotary_dim 256) with a partial last block.
SHAPES = ([(32, 8, 128, 128), (16, 8, 128, 128), (32, 32, 80, 32), (40, 8, 256, 256)] if FULL
          else [(4, 2, 64, 64), (3, 1, 80, 32), (2, 2, 64, 16), (40, 8, 256, 256)])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("num_heads", "num_kv_heads", "head_dim", "rotary_dim"), SHAPES)
@pytest.mark.parametrize("scaling", [None, {"rope_type": "llama3", "factor": 8.0,
                                            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                            "original_max_position_embeddings": 64}])
def test_matches_reference(dtype, num_heads, num_kv_heads, head_dim, rotary_dim, scaling, seed):
    num_tokens, max_pos = (2048, 8192) if FULL else (7, 256)
    cos_sin = reference.rope_cos_sin(rotary_dim, max_pos, 10000.0, scaling).to(DEV)
    positions = torch.randint(0, max_pos, (num_tokens,), device=DEV)
    q = torch.randn(num_tokens, num_heads, head_dim, device=DEV).to(dtype)
    k = torch.randn(num_tokens, num_kv_heads, head_dim, device=DEV).to(dtype)
    q_ref, k_ref = reference.rotary_embedding(positions, q, k, cos_sin)
    q_before, k_before = q.clone(), k.clone()
    with poisoned_outputs():
        q_out, k_out = rotary_embedding(positions, q, k, cos_sin)
    assert torch.equal(q, q_before) and torch.equal(k, k_before)  # inputs untouched
    tol = ELEMENTWISE_TOL[dtype]
    assert rel_error(q_out, q_ref) <= tol and rel_error(k_out, k_ref) <= tol
    # The pass-through dims are copied bit for bit.
    assert torch.equal(q_out[..., rotary_dim:], q[..., rotary_dim:])

    q_in, k_in = rotary_embedding(positions.int(), q, k, cos_sin, inplace=True)
    assert q_in.data_ptr() == q.data_ptr() and k_in.data_ptr() == k.data_ptr()
    assert torch.equal(q, q_out) and torch.equal(k, k_out)


def test_strided_views_of_fused_qkv(seed):
    num_tokens, nh, kvh, hd = (512, 32, 8, 128) if FULL else (5, 4, 2, 64)
    qkv = torch.randn(num_tokens, nh + 2 * kvh, hd, device=DEV).to(DTYPES[0])
    q, k = qkv[:, :nh], qkv[:, nh:nh + kvh]
    cos_sin = reference.rope_cos_sin(hd, 64, 1e6).to(DEV)
    positions = torch.randint(0, 64, (num_tokens,), device=DEV)
    q_ref, k_ref = reference.rotary_embedding(positions, q, k, cos_sin)
    v_before = qkv[:, nh + kvh:].clone()
    rotary_embedding(positions, q, k, cos_sin, inplace=True)
    tol = ELEMENTWISE_TOL[DTYPES[0]]
    assert rel_error(q, q_ref) <= tol and rel_error(k, k_ref) <= tol
    assert torch.equal(qkv[:, nh + kvh:], v_before)  # v, next to k, untouched


def test_input_errors():
    q = torch.randn(3, 4, 64, device=DEV)
    k = torch.randn(3, 2, 64, device=DEV)
    pos = torch.arange(3, device=DEV)
    cs = reference.rope_cos_sin(64, 16, 1e4).to(DEV)
    with pytest.raises(ValueError, match="rotary_dim"):
        rotary_embedding(pos, q, k, reference.rope_cos_sin(128, 16, 1e4).to(DEV))
    with pytest.raises(ValueError, match="positions has 2 entries"):
        rotary_embedding(pos[:2], q, k, cs)
    with pytest.raises(ValueError, match="does not match q shape"):
        rotary_embedding(pos, q, k[:, :, :32], cs)
    with pytest.raises(TypeError, match="positions must have dtype"):
        rotary_embedding(pos.float(), q, k, cs)
