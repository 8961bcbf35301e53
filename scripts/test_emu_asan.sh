#!/usr/bin/env bash
# The emulated CUDA kernels under AddressSanitizer: builds the ASan variant of the emulation
# (build/emu-address/) and runs every emulated test (pytest -m emu tests/ops) with it. Run inside
# the environment. CI runs it after the test suite; extra pytest arguments are passed on.
#
# The emulation library is compiled with -fsanitize=address and loaded into a Python that is not:
# the ASan runtime must come first (LD_PRELOAD), and libstdc++ with it so that ASan can intercept
# __cxa_throw. Leak checking is off (the interpreter keeps objects until exit by design).
set -euo pipefail
cd "$(dirname "$0")/.."
export MONA_EMU_SANITIZE=address
LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
export LD_PRELOAD
logs=build/emu-address/asan
mkdir -p build/emu-address
rm -f "$logs".*
export ASAN_OPTIONS="detect_leaks=0:log_path=$logs:${ASAN_OPTIONS:-}"
status=0
python tests/ops/emu.py && python -m pytest -q -p no:cacheprovider -m emu tests/ops "$@" || status=$?
if compgen -G "$logs.*" > /dev/null; then
  echo "AddressSanitizer reports:"
  cat "$logs".*
  status=1
fi
exit "$status"
