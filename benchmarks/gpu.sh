#!/usr/bin/env bash
# One pass on a CUDA machine that always brings results back, in under 9 minutes:
#   1. environment (versions, nvidia-smi);
#   2. build tgfr._C with the CUDA kernels for this GPU's architecture; if that fails (or the result does
#      not import), a CPU-only build (TGFR_NO_CUDA=1) so that the Triton kernels still run;
#   3. the tests that run on CUDA tensors (ids with cuda/gpu/triton), first;
#   4. the application at its smallest size (benchmarks/app_runs.py: train with AMP + eval, xmodal train,
#      study), each under its own timeout, each a row of the report;
#   5. the GPU benchmark (benchmarks/bench_gpu.py) with most of the time that is left;
#   6. the rest of the tests (not the slow end-to-end ones).
# Every step is bounded by `timeout` and none stops the next; collection errors do not stop pytest.
# Results, written as they come: the log (tee'd there directly), RESULTS_GPU.{json,md} after every row,
# RESULTS_GPU.png last, the tests' junit XML. They go to $OUT when set, else benchmarks/ (a dry run: a
# temporary folder); a real run also leaves RESULTS_GPU.* in benchmarks/ to commit.
#
#   bash benchmarks/gpu.sh              # on the GPU machine, from anywhere
#   bash benchmarks/gpu.sh --dry-run    # the same on a CPU machine (or TGFR_GPU_DRY_RUN=1): the CUDA build
#                                       # simulated as failing (the installed extension is used), tests only
#                                       # collected, the benchmark on tiny sizes with Triton interpreted
# Environment: PYTHON (default .venv/bin/python if present, else python3), TGFR_GPU_TOTAL_S (default 570),
# TGFR_GPU_OUT (results folder, overrides $OUT). Exit status: that of the first failing step.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=${TGFR_GPU_DRY_RUN:-0}
for arg in "$@"; do
  case $arg in
    --dry-run) DRY_RUN=1 ;;
    *) echo "usage: bash benchmarks/gpu.sh [--dry-run]" >&2; exit 2 ;;
  esac
done
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
RESULTS=${TGFR_GPU_OUT:-${OUT:-}}
if [ -z "$RESULTS" ]; then
  if [ "$DRY_RUN" = 1 ]; then RESULTS=$(mktemp -d "${TMPDIR:-/tmp}/tgfr-gpu-dry-run.XXXXXX"); else RESULTS=benchmarks; fi
fi
mkdir -p "$RESULTS"
LOG=$RESULTS/gpu_run.log
# everything from here on goes to the log as it is written: a killed run still brings its log back
exec > >(tee -a "$LOG") 2>&1
tee_pid=$!

TOTAL_S=${TGFR_GPU_TOTAL_S:-570}
start=$(date +%s)
status=0
export PYTHONUNBUFFERED=1
left() { echo $((TOTAL_S - ($(date +%s) - start))); }
clamp() { # clamp VALUE MIN MAX
  local v=$1
  [ "$v" -lt "$2" ] && v=$2
  [ "$v" -gt "$3" ] && v=$3
  echo "$v"
}
step() { # step NAME SECONDS COMMAND...: run bounded by timeout, remember the first failure, never stop
  local name=$1 seconds=$2
  shift 2
  echo "== $name (at $(($(date +%s) - start)) s, up to $seconds s)"
  timeout -k 10 "$seconds" "$@"
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    [ "$rc" -eq 124 ] && echo "== $name: cut off after $seconds s" || echo "== $name failed with status $rc"
    [ "$status" -eq 0 ] && status=$rc
  fi
  return "$rc"
}

echo "== tgfr gpu.sh: dry run $DRY_RUN, python $PYTHON, results in $RESULTS, $(date -u '+%F %T UTC')"
step "environment" 60 "$PYTHON" -c "
import torch
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')
try:
    import triton; print('triton', triton.__version__)
except ImportError:
    print('triton not installed')
"
if command -v nvidia-smi >/dev/null; then step "nvidia-smi" 30 nvidia-smi; fi
if command -v nvcc >/dev/null; then step "nvcc" 30 nvcc --version; fi

# 2. build: CUDA for this GPU only (half the compile time of the default sm_80+sm_90), else CPU-only
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
build() { "$PYTHON" -m pip install --no-build-isolation --no-deps --no-index -e . ; }
if [ "$DRY_RUN" = 1 ]; then
  cuda_build() { echo "dry run: simulating a failed CUDA build"; return 1; }
  cpu_build() { echo "dry run: using the extension already built"; }
else
  arch=$("$PYTHON" -c "import torch; p = torch.cuda.get_device_capability(); print(f'{p[0]}{p[1]}')" 2>/dev/null || echo 90)
  cuda_build() { TGFR_CUDA_ARCHS=${TGFR_CUDA_ARCHS:-$arch} build; }
  cpu_build() { TGFR_NO_CUDA=1 build; }
fi
export -f build cuda_build cpu_build
export PYTHON DRY_RUN
if step "build with CUDA" 200 bash -c cuda_build &&
  step "extension has CUDA kernels" 60 "$PYTHON" -c "import tgfr._C as c; assert c.built_with_cuda(), 'built without CUDA'"; then
  echo "== CUDA build ok"
else
  echo "== CUDA build unusable: CPU-only build, so that the Triton kernels still run"
  step "build CPU-only" "$(clamp $(($(left) - 250)) 60 150)" bash -c cpu_build
  [ "$DRY_RUN" = 1 ] && status=0 # the failure above was simulated
  step "extension imports" 60 "$PYTHON" -c "import tgfr._C; from tgfr.ops import available_backends; print('backends on cuda:', available_backends('cuda') if __import__('torch').cuda.is_available() else 'no device')"
fi

# 3. the tests that run on CUDA tensors, before anything else can eat their time
GPU_TESTS="cuda or gpu or triton"
# -v: each result is in the log as it happens, so a run cut off still says what passed and failed
pytest_args=(-v --tb=short -p no:cacheprovider --continue-on-collection-errors)
[ "$DRY_RUN" = 1 ] && pytest_args=(-qq -p no:cacheprovider --continue-on-collection-errors --collect-only)
step "tests on CUDA tensors" "$(clamp $(($(left) - 250)) 30 150)" \
  "$PYTHON" -m pytest "${pytest_args[@]}" --junitxml="$RESULTS/tests_gpu.xml" tests/ -k "$GPU_TESTS"

# 4. the application: can a user train here? (a row each in the report, whatever happens)
step "application runs" "$(clamp $(($(left) - 200)) 90 240)" "$PYTHON" benchmarks/app_runs.py --out-dir "$RESULTS" \
  --timeout-s 90

# 5. the benchmark: what is left, less the rest of the tests and a margin for the plot
budget=$(clamp $(($(left) - 110)) 30 330)
bench_args=(--budget-s "$budget" --out-dir "$RESULTS")
[ "$DRY_RUN" = 1 ] && bench_args+=(--dry-run)
step "benchmark" $((budget + 60)) "$PYTHON" benchmarks/bench_gpu.py "${bench_args[@]}"
if [ "$DRY_RUN" != 1 ] && [ "$RESULTS" != benchmarks ]; then
  cp "$RESULTS"/RESULTS_GPU.* benchmarks/ 2>/dev/null
fi

# 6. the rest of the tests, less the slow end-to-end runs (CPU work that CI does)
step "other tests" "$(clamp $(($(left) - 15)) 20 300)" \
  "$PYTHON" -m pytest "${pytest_args[@]}" --junitxml="$RESULTS/tests_other.xml" tests/ -k "not ($GPU_TESTS)" -m "not slow"

echo "== done in $(($(date +%s) - start)) s, status $status; results in $RESULTS:"
ls -l "$RESULTS"
exec >&- 2>&-
wait "$tee_pid"
exit "$status"
