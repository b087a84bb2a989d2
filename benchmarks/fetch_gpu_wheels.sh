#!/usr/bin/env bash
# The wheels the GPU machine lacks (it has torch, triton and transformers, no internet), into
# the git-ignored .whl/ that device calls carry: gguf for the engine, and in .whl/server/ the
# server's stack for `gpu_session.sh server` (CPython 3.12, manylinux x86_64; ~4 MB).
# Versions: those the development environment runs. Usage: bash benchmarks/fetch_gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
get() { python -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 "$@"; }
get --no-deps -d .whl gguf==0.17.1  # (its numpy is on the GPU machine)
# The server's stack with its dependencies, resolved for that Python.
get -d .whl/server fastapi==0.165.0 uvicorn==0.55.0 prometheus_client==0.26.0 \
  pydantic==2.14.4 pydantic-settings==2.16.3
du -sh .whl
