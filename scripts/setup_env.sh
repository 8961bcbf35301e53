#!/usr/bin/env bash
# Create (or reuse) a virtual environment and install mona into it, compiling the extension.
#   bash scripts/setup_env.sh [VENV_DIR]      (default: .venv)
# Then: source VENV_DIR/bin/activate. Knobs: see docs/install.md "Build knobs" (MONA_FORCE_CPU, ...).
# The compile shows ninja's progress ([n/N] file); the full log is build.log.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-${MONA_VENV:-.venv}}
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
echo "[setup] pip, setuptools, wheel (pip is quiet)"
python -m pip install --quiet --upgrade pip "setuptools>=64" wheel
# torch 2.14.1 (CUDA 13 build): builds CUDA kernels even on a machine without a GPU.
echo "[setup] torch ${MONA_TORCH_VERSION:-2.14.1} (CUDA build, about 5.5 GB; skipped when present), ninja, cmake:" \
  "pip is quiet meanwhile, about 1-2 min from a local mirror, longer when it downloads"
python -m pip install --quiet "torch==${MONA_TORCH_VERSION:-2.14.1}" ninja "cmake>=3.26"
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
echo "[setup] compiling mona: its Python dependencies first (quiet), then the compile, ninja's [n/N] (full log: build.log)"
start=$(date +%s)
set +e
python -m pip install --no-build-isolation -v -e ".[train,test]" 2>&1 | tee build.log | awk '
  /^ *mona build configuration/ && !shown { show = 1; shown = 1 }
  show { sub(/^ +/, ""); print "  " $0; fflush(); if (/^====/) show = 0; next }
  /^ *\[[0-9]+\/[0-9]+\]/ {
    sub(/^ +/, "")
    src = ""
    for (i = 2; i < NF; i++) if ($i ~ /\.(cpp|cu)$/) src = $i
    if (src == "") src = "linking"
    n = split(src, parts, "/")
    print "  " $1 " " (n > 1 ? parts[n - 1] "/" parts[n] : src); fflush()
  }'
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ]; then
  echo "[setup] the build failed; the end of build.log:"
  tail -n 80 build.log
  exit "$status"
fi
echo "[setup] compiled in $(( $(date +%s) - start ))s"
# medpy is GPL: a test-time cross-check of the metrics only, never a runtime dependency.
echo "[setup] medpy (the metrics' test-time cross-check)"
python -m pip install --quiet --no-deps medpy
echo "ready: source $VENV/bin/activate"
