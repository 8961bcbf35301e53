#!/usr/bin/env bash
# One command for someone with an NVIDIA GPU: build mona's CUDA kernels for this GPU, run every
# CUDA test and every benchmark on it, and collect everything in one folder to send back.
#
#   bash scripts/gpu_check.sh [--venv DIR] [--out DIR] [--quick]
#
#   --venv DIR   build into this virtual environment (an existing one: `pip install
#                --no-build-isolation -e ".[train,test]"` into it; a missing one: created by
#                scripts/setup_env.sh). Default: the current python if it imports torch and
#                torch.cuda.is_available(), else .venv (built into like --venv: if missing,
#                scripts/setup_env.sh creates it with torch 2.14.1, a CUDA 13 build, which needs
#                an NVIDIA driver >= 580).
#   --out DIR    results folder (default: $MONA_GPU_CHECK_OUT, else gpu_check_<hostname>_<date>/).
#   --quick      benchmarks with --quick (small sizes) instead of their default sizes.
#
# Environment: MONA_GPU_CHECK_ARCH_LIST overrides the arch list (default: the compute capability
# that nvidia-smi reports, e.g. "8.6"); MONA_GPU_CHECK_TIMEOUT_BUILD / _TESTS / _BENCH are the
# per-step time limits in seconds (defaults 1500 / 900 / 600), MONA_GPU_CHECK_TIMEOUT_SANITIZER that of
# each compute-sanitizer pass over the CUDA tests (racecheck, synccheck, memcheck; default 1800).
#
# Every step runs even if an earlier one failed; summary.txt lists pass/fail and seconds per step,
# and the script exits 1 if any step failed (2 if no GPU is visible: nothing is run then).
# Expected time on one GPU with an existing torch environment (an estimate: never run on a GPU
# yet): a few minutes (build ~1-3 min, CUDA tests ~1 min, benchmarks a few minutes); creating
# .venv downloads torch (~5.5 GB) first.
# The step functions below run through `timeout bash -c` (exported with export -f):
# shellcheck disable=SC2329
set -uo pipefail

die() { echo "gpu_check: $*" >&2; exit 2; }

VENV=${MONA_GPU_CHECK_VENV:-}
OUT=${MONA_GPU_CHECK_OUT:-}
QUICK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --venv) [ $# -ge 2 ] || die "--venv needs a directory"; VENV=$2; shift 2 ;;
    --venv=*) VENV=${1#--venv=}; shift ;;
    --out) [ $# -ge 2 ] || die "--out needs a directory"; OUT=$2; shift 2 ;;
    --out=*) OUT=${1#--out=}; shift ;;
    --quick) QUICK=1; shift ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

# Paths given on the command line are relative to where the user ran the script.
abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
[ -z "$VENV" ] || VENV=$(abspath "$VENV")
[ -z "$OUT" ] || OUT=$(abspath "$OUT")
cd "$(dirname "$0")/.." || die "cannot cd to the repository root"
ROOT=$PWD

# ---- 0. is there a GPU? (nothing is built or written without one) -------------------------------
command -v nvidia-smi > /dev/null 2>&1 \
  || die "nvidia-smi not found: no NVIDIA driver on this machine (or not on PATH). This check needs a visible NVIDIA GPU; nothing was run."
if ! smi_list=$(nvidia-smi -L 2>&1); then
  die "nvidia-smi failed, so no GPU is usable (driver not loaded?); nothing was run. nvidia-smi said:
$smi_list"
fi
if ! grep -q '^GPU ' <<< "$smi_list"; then
  die "nvidia-smi lists no GPU; nothing was run. nvidia-smi -L said: ${smi_list:-<nothing>}"
fi
if [ -n "${MONA_GPU_CHECK_ARCH_LIST:-}" ]; then
  ARCHS=$MONA_GPU_CHECK_ARCH_LIST
else
  caps=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>&1) \
    || die "nvidia-smi cannot report compute_cap (driver too old?): $caps
Set MONA_GPU_CHECK_ARCH_LIST to your GPU's compute capability (e.g. 8.6) and rerun."
  # One entry per distinct GPU kind (several GPUs of one kind -> one arch).
  ARCHS=$(tr -d ' \r' <<< "$caps" | grep -E '^[0-9]+\.[0-9]+$' | sort -u | paste -sd ';' -)
  [ -n "$ARCHS" ] || die "no compute capability in nvidia-smi's answer '$caps'; set MONA_GPU_CHECK_ARCH_LIST (e.g. 8.6)"
fi
export TORCH_CUDA_ARCH_LIST=$ARCHS MONA_FORCE_CUDA=1
unset MONA_FORCE_CPU
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi

[ -n "$OUT" ] || OUT=$ROOT/gpu_check_$(hostname -s 2>/dev/null || hostname)_$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT/bench" || die "cannot create the results folder $OUT"
SUMMARY=$OUT/summary.txt
T0=$(date +%s)
FAILED=0
STEP=0
N_STEPS=14  # nvidia-smi, build, build_info, environment, cuda_tests, 3 sanitizer passes, 6 benchmarks

{
  echo "mona GPU check"
  echo "date            $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "host            $(hostname)"
  echo "git commit      $(git rev-parse HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ' (+ local changes, see env.txt)')"
  echo "GPUs            $(tr '\n' ';' <<< "$smi_list")"
  echo "arch list       TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
  echo
  printf '%-20s %-8s %8s  %s\n' step result seconds log
} > "$SUMMARY"

# step NAME TIMEOUT_S LOGFILE CMD...: run CMD with a time limit, its output into LOGFILE, and
# record the result in summary.txt; never stops the script.
step() {
  local name=$1 limit=$2 log=$3 start rc result secs
  shift 3
  STEP=$((STEP + 1))
  echo "[$STEP/$N_STEPS] $name ... (log: ${log#"$ROOT"/}, limit ${limit}s)"
  start=$(date +%s)
  # timeout runs a program, not a shell function: the step functions are exported (export -f).
  timeout --kill-after=30 "$limit" bash -c 'set -o pipefail; "$@"' step "$@" > "$log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - start ))
  case $rc in
    0) result=pass ;;
    124|137) result=TIMEOUT ;;
    *) result="FAIL($rc)" ;;
  esac
  [ "$rc" -eq 0 ] || FAILED=1
  printf '%-20s %-8s %8s  %s\n' "$name" "$result" "$secs" "${log#"$OUT"/}" >> "$SUMMARY"
  if [ "$rc" -eq 0 ]; then
    echo "      $name: pass (${secs}s)"
  else
    echo "      $name: $result after ${secs}s; last lines of $log:"
    tail -n 15 "$log" | sed 's/^/        /'
  fi
  return 0
}

# ---- 1. the GPU as the driver sees it -------------------------------------------------------------
gpu_info() {
  nvidia-smi
  echo
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv | tee "$OUT/gpu.csv"
}
export -f gpu_info
export OUT
step nvidia-smi 60 "$OUT/nvidia-smi.txt" gpu_info

# ---- 2. environment + build for this GPU's arch only ---------------------------------------------
if [ -n "$VENV" ]; then
  MODE=venv
elif PY_CUR=$(command -v python || command -v python3) \
     && "$PY_CUR" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' > /dev/null 2>&1; then
  MODE=current
else
  MODE=venv
  VENV=$ROOT/.venv
fi
if [ "$MODE" = current ]; then
  PY=$PY_CUR
else
  PY=$VENV/bin/python
fi
build() {
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MONA_FORCE_CUDA=1 CUDA_HOME=${CUDA_HOME:-<unset>}"
  command -v nvcc > /dev/null 2>&1 && nvcc --version
  [ -z "${CUDA_HOME:-}" ] || "$CUDA_HOME/bin/nvcc" --version
  if [ "$MODE" = venv ] && [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV with scripts/setup_env.sh (installs torch, builds mona; build log: build.log)"
    bash scripts/setup_env.sh "$VENV"
    local rc=$?
    cat build.log
    return "$rc"
  fi
  echo "building into the environment of $PY"
  "$PY" -m pip install --no-build-isolation -v -e ".[train,test]"
}
export -f build
export PY MODE VENV
step build "${MONA_GPU_CHECK_TIMEOUT_BUILD:-1500}" "$OUT/build.log" build

# ---- 3. what was built, and the environment ------------------------------------------------------
check_build() {
  "$PY" - <<'PY'
import torch

import mona_ext

info = mona_ext.build_info()
print(info)
print()
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuda_available", torch.cuda.is_available())
for i in range(torch.cuda.device_count()):
    print(f"cuda:{i}", torch.cuda.get_device_name(i), "capability", torch.cuda.get_device_capability(i))
problems = []
if not info["with_cuda"]:
    problems.append("the extension was built without CUDA kernels")
if not torch.cuda.is_available():
    problems.append("torch sees no GPU (driver too old for this torch's CUDA?): the CUDA tests would all skip")
missing = {n: k for n, k in info["ops"].items() if not ({"CPU", "CUDA"} <= set(k) or k == ["CompositeImplicitAutograd"])}
if missing:
    problems.append(f"ops without a CUDA kernel: {missing}")
if problems:
    raise SystemExit("build check FAILED: " + "; ".join(problems))
print("build check: CUDA kernels built and a GPU is visible to torch")
PY
  local rc=$?
  echo
  "$PY" -m mona info
  return "$rc"
}
export -f check_build
step build_info 120 "$OUT/build_info.txt" check_build

environment() {
  echo "python: $PY ($("$PY" --version 2>&1)), mode: $MODE${VENV:+, venv $VENV}"
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST CUDA_HOME=${CUDA_HOME:-<unset>} CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-<unset>}"
  uname -a
  grep -m1 'model name' /proc/cpuinfo
  echo "cores: $(nproc)"
  free -g | head -2
  echo
  echo "git: $(git rev-parse HEAD)"
  git status --short
  git diff --stat HEAD
  echo
  echo "pip freeze:"
  "$PY" -m pip freeze | tee "$OUT/pip_freeze.txt"
}
export -f environment
step environment 120 "$OUT/env.txt" environment

# ---- 4. every CUDA test --------------------------------------------------------------------------
cuda_tests() {
  "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/ops --junitxml="$OUT/pytest_cuda.xml"
  local rc=$?
  # On a GPU no CUDA test may be skipped for want of one, and some must have run.
  if [ "$rc" -eq 0 ] && ! grep -Eq '[0-9]+ passed' "$OUT/pytest_cuda.log"; then
    echo "gpu_check: no CUDA test passed"
    return 1
  fi
  if [ "$rc" -eq 0 ] && grep -q 'needs a CUDA GPU' "$OUT/pytest_cuda.log"; then
    echo "gpu_check: CUDA tests were skipped although a GPU is visible"
    return 1
  fi
  return "$rc"
}
export -f cuda_tests
step cuda_tests "${MONA_GPU_CHECK_TIMEOUT_TESTS:-900}" "$OUT/pytest_cuda.log" cuda_tests

# ---- 4b. the CUDA tests under compute-sanitizer (racecheck, synccheck, memcheck) -----------------
# Where the toolkit has compute-sanitizer: each tool over the CUDA test rows; any report fails the
# step (--error-exitcode). A missing compute-sanitizer is reported as a failed step, not skipped silently.
SANITIZER=$(command -v compute-sanitizer 2> /dev/null || true)
[ -n "$SANITIZER" ] || [ ! -x "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" ] \
  || SANITIZER="${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer"
export SANITIZER
sanitized_tests() {
  local tool=$1
  if [ -z "$SANITIZER" ]; then
    echo "gpu_check: compute-sanitizer not found (PATH, \$CUDA_HOME/bin): install the CUDA toolkit's sanitizer to run --tool $tool"
    return 1
  fi
  echo "$SANITIZER ($("$SANITIZER" --version 2>&1 | tail -n 1)) --tool $tool"
  # --target-processes all: pytest's CUDA work runs in the python process it starts
  "$SANITIZER" --tool "$tool" --error-exitcode 97 --target-processes all --print-limit 20 \
    "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/ops -x
}
export -f sanitized_tests
for tool in racecheck synccheck memcheck; do
  step "sanitizer_$tool" "${MONA_GPU_CHECK_TIMEOUT_SANITIZER:-1800}" "$OUT/sanitizer_$tool.log" sanitized_tests "$tool"
done

# ---- 5. every benchmark on the GPU (results: $OUT/bench/*.json, *.md) ----------------------------
bench_flags=(--device cuda)
[ "$QUICK" -eq 0 ] || bench_flags+=(--quick)
for b in bench_class_mean bench_contrast_loss bench_pixel_kl bench_queue_kl bench_bank bench_train_step; do
  step "$b" "${MONA_GPU_CHECK_TIMEOUT_BENCH:-600}" "$OUT/bench/$b.log" \
    env MONA_BENCH_RESULTS="$OUT/bench" "$PY" -m "benchmarks.$b" "${bench_flags[@]}"
done

TOTAL=$(( $(date +%s) - T0 ))
{
  echo
  printf '%-20s %-8s %8s\n' total "$([ "$FAILED" -eq 0 ] && echo pass || echo FAIL)" "$TOTAL"
} >> "$SUMMARY"
echo
cat "$SUMMARY"
echo
echo "results: $OUT -- please send us this folder (e.g. tar czf $(basename "$OUT").tgz -C $(dirname "$OUT") $(basename "$OUT"))"
exit "$FAILED"
