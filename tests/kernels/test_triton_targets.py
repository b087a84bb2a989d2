"""Launch choices per GPU generation: arch names, shared-memory sizing of the gemv's stages.

`test_triton_compile.py` builds every launch for each target and checks spills and shared
memory; here the choosing logic itself, on the CPU.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from localserve.kernels.triton._common import (
    arch_override,
    gpu_arch,
    nvidia_capability,
    rdna,
    shared_memory_limit,
)
from localserve.kernels.triton.gemv import SMALL_K_CONFIG, GemvConfig, default_config


def test_arch_names():
    assert nvidia_capability("sm_90") == (9, 0)
    assert nvidia_capability("sm_120") == (12, 0)
    assert nvidia_capability("sm_75") == (7, 5)
    assert nvidia_capability("gfx942") is None and nvidia_capability(None) is None
    assert rdna("gfx1100") and rdna("gfx1201")
    assert not rdna("gfx942") and not rdna("sm_90") and not rdna(None)


def test_override_names_the_target():
    cpu = torch.device("cpu")
    assert gpu_arch(cpu) is None
    with arch_override("gfx942"):
        assert gpu_arch(cpu) == "gfx942" and shared_memory_limit(cpu) == 64 * 1024
    with arch_override("sm_89"):
        assert shared_memory_limit(cpu) == 99 * 1024
    assert gpu_arch(cpu) is None


@pytest.mark.parametrize(("arch", "dtype", "expected"), [
    ("sm_90", torch.bfloat16, GemvConfig()),                      # 3 x 24 KB of 227 KB
    ("sm_90", torch.float32, GemvConfig()),                       # 3 x 48 KB
    ("sm_89", torch.float32, GemvConfig(num_stages=3)),           # 2 x 48 KB of 99 KB
    ("gfx942", torch.bfloat16, GemvConfig(num_stages=3)),         # 2 x 24 KB of 64 KB
    ("gfx942", torch.float32, GemvConfig(num_stages=2)),          # 1 x 48 KB
    ("gfx1100", torch.bfloat16, SMALL_K_CONFIG),                  # 64-wide K: 6 KB a stage
    ("sm_75", torch.float16, SMALL_K_CONFIG),
    ("sm_75", torch.float32, GemvConfig(num_stages=2)),
])
def test_gemv_stages_fit_shared_memory(arch, dtype, expected):
    x = torch.empty(1, 64, dtype=dtype)
    with arch_override(arch):
        assert default_config(x) == expected
