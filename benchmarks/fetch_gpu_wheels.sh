#!/usr/bin/env bash
# The wheels the GPU machine lacks (it has torch, triton and transformers, no internet), into
# the git-ignored .whl/ that device calls carry: gguf for the engine, and in .whl/server/ the
# server's stack for `gpu_session.sh server` (CPython 3.12, manylinux x86_64; ~4 MB).
# The versions are the ones the development environment runs. Usage: bash benchmarks/fetch_gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
get() { python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d "$@"; }
get .whl gguf==0.17.1
get .whl/server annotated-types==0.8.0 anyio==4.16.0 click==8.5.1 fastapi==0.165.0 h11==0.16.0 \
  idna==3.21 prometheus_client==0.26.0 pydantic==2.14.4 pydantic_core==2.50.5 \
  pydantic-settings==2.16.3 python-dotenv==1.2.4 sniffio==1.3.1 starlette==1.10.0 \
  typing_extensions==4.16.0 typing-inspection==0.4.5 uvicorn==0.55.0
du -sh .whl
