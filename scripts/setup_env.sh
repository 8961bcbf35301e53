#!/usr/bin/env bash
# Create (or reuse) a virtual environment and install mona into it, compiling the extension.
#   bash scripts/setup_env.sh [VENV_DIR]      (default: .venv)
# Then: source VENV_DIR/bin/activate. Knobs: see README "Build knobs" (MONA_FORCE_CPU, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-${MONA_VENV:-.venv}}
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install --quiet --upgrade pip "setuptools>=64" wheel
# torch 2.14.1 (CUDA 13 build): builds CUDA kernels even on a machine without a GPU.
python -m pip install --quiet "torch==${MONA_TORCH_VERSION:-2.14.1}" ninja "cmake>=3.26"
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
echo "building mona (log: build.log) ..."
python -m pip install --no-build-isolation -v -e ".[train,test]" > build.log 2>&1 || { tail -n 80 build.log; exit 1; }
sed -n '/^ *mona build configuration/,/^ *====/p' build.log | sed 's/^ *//' | head -12
# medpy is GPL: a test-time cross-check of the metrics only, never a runtime dependency.
python -m pip install --quiet --no-deps medpy
echo "ready: source $VENV/bin/activate"
