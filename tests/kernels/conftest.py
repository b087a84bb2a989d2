"""Shared set-up of the kernel tests.

Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors: the variable must
be set before `triton.jit` wraps them, that is before any test module here imports them.
`seed` seeds each test afresh and prints the seed, so a failing draw can be replayed.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def seed() -> int:
    from localserve.kernels.triton.testing import fresh_seed

    s = fresh_seed()
    print(f"seed={s}")
    return s
