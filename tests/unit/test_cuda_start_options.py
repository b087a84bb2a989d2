"""The GPU runner's start-up options: prefill graphs and compile-ahead are on unless an
environment variable set to 0 turns them off (read at import, so each case is a fresh process)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

READ_FLAGS = ("from localserve.backends.cuda import compile_ahead, runner; "
              "print(runner.PREFILL_GRAPHS, compile_ahead.COMPILE_AHEAD)")


def flags(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("LOCALSERVE_PREFILL_GRAPHS", "LOCALSERVE_COMPILE_AHEAD")}
    done = subprocess.run([sys.executable, "-c", READ_FLAGS], env={**clean, **env},
                          capture_output=True, text=True, timeout=120, check=True)
    return done.stdout.strip()


@pytest.mark.parametrize("env, want", [
    ({}, "True True"),
    ({"LOCALSERVE_PREFILL_GRAPHS": "1", "LOCALSERVE_COMPILE_AHEAD": "1"}, "True True"),
    ({"LOCALSERVE_PREFILL_GRAPHS": "0"}, "False True"),
    ({"LOCALSERVE_COMPILE_AHEAD": "0"}, "True False"),
])
def test_on_unless_turned_off(env, want):
    assert flags(**env) == want
