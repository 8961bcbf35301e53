#!/usr/bin/env bash
# The README's main command: set up the environment, show what was built, tour the fused ops,
# then run the demo (phantoms, 1 labeled patient: supervised vs GLCon + MONA -> evaluation; ~10 min on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh "${MONA_VENV:-.venv}"
# shellcheck disable=SC1091
. "${MONA_VENV:-.venv}/bin/activate"
mona info
python examples/ops_demo.py
mona demo --out "${MONA_DEMO_OUT:-runs/demo}"
