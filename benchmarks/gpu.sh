#!/usr/bin/env bash
# One pass on a CUDA machine, from the repository root, in under 9 minutes on an H100:
#   1. build tgfr._C with the CUDA kernels (torch, triton, pybind11 and ninja must be installed;
#      nothing is fetched from PyPI),
#   2. run the test suite (every backend then also runs on CUDA tensors),
#   3. benchmark every backend (benchmarks/bench_gpu.py) with the time that is left.
# Results: benchmarks/RESULTS_GPU.{md,json,png}, and a log; all copied to $OUT when it is set.
# Exit status: that of the first failing step (the benchmark runs even when tests fail).
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
TOTAL_S=${TGFR_GPU_TOTAL_S:-530}     # whole script
TESTS_MAX_S=${TGFR_GPU_TESTS_S:-210} # the test suite is cut off after this
MARGIN_S=60                          # benchmark warm-ups, matmul roofline, plots
start=$(date +%s)
log=benchmarks/gpu_run.log
: >"$log"
status=0
copy_log() { if [ -n "${OUT:-}" ]; then cp "$log" "$OUT"/; fi; }
trap copy_log EXIT

step() {  # step NAME COMMAND...: run, log, remember the first failure
  local name=$1
  shift
  echo "== $name ($(($(date +%s) - start)) s)" | tee -a "$log"
  "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    echo "== $name failed with status $rc" | tee -a "$log"
    [ "$status" -eq 0 ] && status=$rc
  fi
  return "$rc"
}

export MAX_JOBS=${MAX_JOBS:-$(nproc)}
step "environment" "$PYTHON" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))"
step "build" "$PYTHON" -m pip install --no-build-isolation --no-deps -e . || { echo "build failed"; exit "$status"; }
step "extension has CUDA kernels" "$PYTHON" -c "import tgfr._C as c; assert c.built_with_cuda(), 'tgfr._C was built without CUDA'"
step "tests" timeout "$TESTS_MAX_S" "$PYTHON" -m pytest -q tests/
left=$((TOTAL_S - ($(date +%s) - start) - MARGIN_S))
[ "$left" -lt 60 ] && left=60
step "benchmark" "$PYTHON" benchmarks/bench_gpu.py --budget-s "$left"
echo "== done in $(($(date +%s) - start)) s, status $status" | tee -a "$log"
exit "$status"
