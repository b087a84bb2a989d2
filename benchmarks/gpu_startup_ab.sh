#!/usr/bin/env bash
# (d) cold start-up A/B on one device machine, each run a fresh process, variants alternated.
# Usage (device tool, carry .whl): bash benchmarks/gpu_startup_ab.sh ROUNDS VARIANT...
# A variant is a gpu_bench.py workload (d, d:compileahead, ...), or `old` for the tree unpacked
# into ./old (an earlier commit: `mkdir old && git archive REV | tar -x -C old`, untracked).
# DEADLINE=S (seconds into the script) starts no run after S, so a short lease still returns
# whole runs and leaves time for what the call does next.
set -uo pipefail
rounds=$1; shift
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bash benchmarks/gpu_session.sh none >"$OUT/setup.log" 2>&1 || { cat "$OUT/setup.log"; exit 1; }
head -3 "$OUT/setup.log"
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
if [[ -d old ]]; then
  python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/oldsite \
    ./old >>"$OUT/setup.log" 2>&1 || { tail -20 "$OUT/setup.log"; exit 1; }
  (cd /tmp && PYTHONPATH=/tmp/oldsite:/tmp/site python3 -c \
    "import localserve.backends.cuda.runner as r; print('old tree:', r.__file__)")
fi
for round in $(seq "$rounds"); do
  for v in "$@"; do
    if [[ -n ${DEADLINE:-} && $SECONDS -gt $DEADLINE ]]; then
      echo "deadline: no run started after ${DEADLINE}s" | tee -a "$OUT/summary.txt"; break 2
    fi
    if [[ $v == old ]]; then
      line=$(cd old && PYTHONPATH=/tmp/oldsite:/tmp/site timeout 150 python3 \
        benchmarks/gpu_bench.py --only d 2>&1 | tee -a "$OUT/old.log" | grep "(d)" | tail -1)
    else
      line=$(timeout 150 python3 benchmarks/gpu_bench.py --only "$v" 2>&1 \
        | tee -a "$OUT/${v//:/_}.log" | grep "(d)" | tail -1)
    fi
    echo "round $round  $v  ${line:-FAILED}" | tee -a "$OUT/summary.txt"
  done
done
