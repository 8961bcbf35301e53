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
# The time estimate, from what was measured on the 2-core AMD EPYC build machine without a GPU
# (README, Quick start; 2026-12-07, the 8 + 8 demo): 798 s in all from a fresh clone, the CPU-only
# compile 114 s; the demo's runs, one torch thread each: supervised 119 s, supervised_strong 120 s,
# GLCon + MONA 577 s. The demo trains them one per usable core at once (`mona demo --jobs`), MONA first:
# on 2 or more cores its wall time is about the MONA run's (589 s in all), on 1 core their sum.
# Since 2026-12-08 MONA fine-tunes for the whole 400 iterations after GLCon's 100 (issue 22): 100 more
# stage-2 steps, which the benchmark's runs put at +34 % of the MONA run (650 -> 870 s, two at a time),
# so about 770 s; the quickstart with it was not re-measured.
cores=$(nproc 2> /dev/null || echo 1)
if [ -n "$arch" ]; then
  estimate="not measured on a GPU machine (without one: setup and compile ~4 min on 2 cores; the CUDA compile adds to it)"
elif [ "$cores" -ge 2 ]; then
  estimate="about 17 minutes in all on $cores cores without a GPU (setup and compile ~3.5 min, the demo ~13 min: its 3 runs $(( cores < 3 ? cores : 3 )) at a time); an estimate, longer when torch is downloaded or the cores are busy"
else
  estimate="about 21 minutes in all on 1 core without a GPU (setup and compile ~4 min, the demo ~17 min, not measured: its 3 runs one after another); an estimate, longer when torch is downloaded"
fi
cat <<MSG
mona quickstart
  1. environment $VENV: torch 2.14.1 (CUDA build; about 5.8 GB in all, 1-2 min from a local mirror)
  2. compile: $kernels
  3. the ops tour (seconds), then the demo: supervised vs GLCon + MONA on synthetic phantoms, with its progress
  Time: $estimate.
MSG
bash scripts/setup_env.sh "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
mona info
echo "[ops] a tour of the fused ops on random data (a few seconds)"
python examples/ops_demo.py
echo "[demo] mona demo: phantoms, the 3 training runs (one line of progress while they run), the evaluation"
mona demo --out "${MONA_DEMO_OUT:-runs/demo}"
echo "quickstart finished in $(( $(date +%s) - t0 ))s"
