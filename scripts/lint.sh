#!/usr/bin/env bash
# Style checks CI runs (.ci/run): ruff (lint + format, configured in pyproject.toml) for Python and
# clang-format (.clang-format) for csrc/. Run inside the environment (the `test` extra pins both).
#   bash scripts/lint.sh         check only; exits non-zero on any finding
#   bash scripts/lint.sh --fix   apply the fixes and formatting in place
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t cxx < <(git ls-files 'csrc/*.cpp' 'csrc/*.h' 'csrc/*.cu' 'csrc/*.cuh')
if [ "${1:-}" = "--fix" ]; then
  ruff check --fix .
  ruff format .
  clang-format -i "${cxx[@]}"
  exit 0
fi
status=0
ruff check . || status=1
ruff format --check . || status=1
clang-format --dry-run --Werror "${cxx[@]}" || status=1
[ "$status" -eq 0 ] || echo "lint: findings above; 'bash scripts/lint.sh --fix' applies the fixes" >&2
exit "$status"
