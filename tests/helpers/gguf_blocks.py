"""Random raw GGUF weights (uint8 [rows, row_bytes]) for the kernel tests of every backend.

The `gguf` package quantizes the 32-value block types; it cannot quantize K-quants, so those
get random codes with sane scales, which exercise every bit of their layouts just as well.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf.quants import quantize


def fp16_bytes(v: np.ndarray) -> np.ndarray:
    """[..., n] floats -> [..., 2n] bytes of their fp16 encodings."""
    return np.ascontiguousarray(v.astype(np.float16)).view(np.uint8)


def random_weight(qtype: Q, out: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Raw GGUF bytes [out, row_bytes] (typed array for F32/F16)."""
    if qtype in (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.BF16, Q.F16, Q.F32):
        w = rng.standard_normal((out, k)).astype(np.float32)
        return np.ascontiguousarray(quantize(w, qtype))
    nb = k // 256
    if qtype in (Q.Q4_K, Q.Q5_K):  # d, dmin, scales[12], (Q5_K: qh[32]), qs[128]
        size = 144 if qtype == Q.Q4_K else 176
        blk = np.zeros((out, nb, size), np.uint8)
        blk[..., 0:4] = fp16_bytes(rng.uniform(1e-3, 2e-2, (out, nb, 2)))
        blk[..., 4:] = rng.integers(0, 256, (out, nb, size - 4), dtype=np.uint8)
    elif qtype == Q.Q6_K:  # ql[128] qh[64] scales[16] (int8) d (fp16)
        blk = np.zeros((out, nb, 210), np.uint8)
        blk[..., :192] = rng.integers(0, 256, (out, nb, 192), dtype=np.uint8)
        blk[..., 192:208] = rng.integers(-128, 128, (out, nb, 16), dtype=np.int8).view(np.uint8)
        blk[..., 208:210] = fp16_bytes(rng.uniform(1e-4, 2e-3, (out, nb, 1)))
    else:
        raise ValueError(f"no random {qtype!r} weights")
    return blk.reshape(out, nb * blk.shape[-1])
