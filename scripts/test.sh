#!/usr/bin/env bash
# The test command (README "Tests"): run inside an environment where mona is installed.
# CUDA tests run when a GPU is visible and are skipped otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m pytest -q -p no:cacheprovider "$@" tests
