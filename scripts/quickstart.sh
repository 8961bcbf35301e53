#!/usr/bin/env bash
# The README's main command: set up the environment, show what was built, tour the fused ops, then
# run the demo (phantoms, 1 labeled patient: supervised vs GLCon + MONA -> evaluation).
#   bash scripts/quickstart.sh        knobs: MONA_VENV (default .venv), MONA_DEMO_OUT (runs/demo)
# With a GPU visible, the CUDA kernels are built for its arch only; without one, the CPU kernels
# only (the full build: MONA_FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="8.6" bash scripts/setup_env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
VENV=${MONA_VENV:-.venv}

arch=""
if command -v nvidia-smi > /dev/null 2>&1; then
  arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2> /dev/null | head -n 1 | tr -d ' ' || true)
fi
if [ -n "${MONA_FORCE_CPU:-}${MONA_FORCE_CUDA:-}${TORCH_CUDA_ARCH_LIST:-}" ]; then
  kernels="as your MONA_FORCE_CPU / MONA_FORCE_CUDA / TORCH_CUDA_ARCH_LIST say"
elif [ -n "$arch" ]; then
  export TORCH_CUDA_ARCH_LIST="$arch" MONA_FORCE_CUDA=1
  kernels="CPU + CUDA kernels for this GPU (sm_${arch/./})"
else
  export MONA_FORCE_CPU=1
  kernels="CPU kernels only: no GPU is visible (for the CUDA kernels too, see docs/install.md, Build knobs)"
fi
cat <<MSG
mona quickstart
  1. environment $VENV: torch 2.14.1 (CUDA build; about 5.8 GB in all, 1-2 min from a local mirror)
  2. compile: $kernels
  3. the ops tour, then the demo: supervised vs GLCon + MONA on synthetic phantoms (about 9 min on 2 cores)
  Measured from a fresh clone, CPU-only, 2-core AMD EPYC: about 14 minutes in all (see README).
MSG
bash scripts/setup_env.sh "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
mona info
python examples/ops_demo.py
mona demo --out "${MONA_DEMO_OUT:-runs/demo}"
echo "quickstart finished in $(( $(date +%s) - t0 ))s"
