#!/usr/bin/env bash
# The README's main command: set up the environment, then run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh "${MONA_VENV:-.venv}"
# shellcheck disable=SC1091
. "${MONA_VENV:-.venv}/bin/activate"
mona info
python examples/ops_demo.py
