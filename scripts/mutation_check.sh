#!/usr/bin/env bash
# Barrier mutation test of the CUDA kernels under the CPU emulation (docs/testing.md, "Mutation test").
#
# Removes each `__syncthreads();` / `__syncwarp();` statement of csrc/*/*_cuda.cu and
# csrc/common/*.cuh, one at a time, in a temporary copy of csrc/ (MONA_EMU_CSRC; the working tree is
# never edited), rebuilds the emulation from that copy and runs the emulated tests of the op the file
# belongs to (`pytest tests/ops -m emu -k OP -x`; a csrc/common header: every emulated test of the ops). A mutant
# is killed when a test fails. Prints each mutant and the mutation score (killed / total); exits 1
# below 100 %, 2 if the unmutated sources already fail their tests.
#
#   bash scripts/mutation_check.sh           every barrier
#   bash scripts/mutation_check.sh --quick   a reduced set: the first barrier of each file (CI runs every barrier)
#   bash scripts/mutation_check.sh --list    only list the mutants (every barrier)
#   MONA_MUTATION_DIR=DIR                    where the copy and its build live (default: a temp dir,
#                                            removed at the end; a kept DIR makes reruns incremental)
# Run inside the environment (torch + the built mona_ext); CPU-heavy: the caller may prefix `nice`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
mode=full
case "${1:-}" in
  --quick) mode=quick ;;
  --list) mode=list ;;
  "") ;;
  *) echo "usage: $0 [--quick | --list]" >&2; exit 64 ;;
esac

# The mutants: "file:line" of every barrier statement (comments mentioning a barrier do not count).
mapfile -t files < <(ls csrc/*/*_cuda.cu csrc/common/*.cuh | sort)
mutants=()
for f in "${files[@]}"; do
  first=1
  while IFS=: read -r line _; do
    [ "$mode" = quick ] && [ "$first" -eq 0 ] && continue
    mutants+=("$f:$line")
    first=0
  done < <(grep -nE '^[^/]*\b__sync(threads|warp)\(\);' "$f" || true)
done
if [ "$mode" = list ]; then
  printf '%s\n' "${mutants[@]}"
  echo "${#mutants[@]} mutants"
  exit 0
fi

tests_for() {  # the pytest selection of a mutated file
  case "$1" in
    # the harness's own tests (planted bugs in csrc/emu) use no csrc/common header
    csrc/common/*) echo "tests/ops -m emu --ignore=tests/ops/test_emu_harness.py --ignore=tests/ops/test_emu_races.py" ;;
    *) local op; op=$(basename "$(dirname "$1")"); echo "tests/ops -m emu -k $op" ;;
  esac
}

work=${MONA_MUTATION_DIR:-}
if [ -z "$work" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work"
rm -rf "$work/pristine" && cp -r csrc "$work/pristine"
# The copy the emulation builds from: synced with the working tree (only changed files are rewritten,
# so a kept build directory stays incremental).
mkdir -p "$work/csrc"
(cd "$work/pristine" && find . -type f) | while read -r rel; do
  cmp -s "$work/pristine/$rel" "$work/csrc/$rel" 2>/dev/null || { mkdir -p "$(dirname "$work/csrc/$rel")"; cp "$work/pristine/$rel" "$work/csrc/$rel"; }
done
export MONA_EMU_CSRC="$work/csrc" MONA_EMU_BUILD_DIR="$work/build"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
log="$work/log"
t0=$(date +%s)

echo "mutation check ($mode): ${#mutants[@]} barrier mutants; copy and build in $work"
python tests/ops/emu.py > "$log" 2>&1 || { tail -n 40 "$log"; exit 2; }
if ! python -m pytest -q -p no:cacheprovider -x tests/ops -m emu > "$log" 2>&1; then
  tail -n 30 "$log"
  echo "mutation check: the unmutated sources fail their emulated tests (above); no mutant can be judged"
  exit 2
fi
echo "unmutated: every emulated test passes ($(( $(date +%s) - t0 ))s)"

killed=0
survived=()
for m in "${mutants[@]}"; do
  f=${m%:*}
  line=${m##*:}
  ts=$(date +%s)
  cp "$work/pristine/${f#csrc/}" "$work/csrc/${f#csrc/}"
  sed -i -E "${line}s/\b__sync(threads|warp)\(\);/(void)0; \/* mutant: barrier removed *\//" "$work/csrc/${f#csrc/}"
  if ! python tests/ops/emu.py > "$log" 2>&1; then
    tail -n 20 "$log"
    echo "mutation check: the mutant $m does not build"
    exit 2
  fi
  # shellcheck disable=SC2046
  if python -m pytest -q -p no:cacheprovider -x $(tests_for "$f") > "$log" 2>&1; then
    survived+=("$m")
    echo "SURVIVED $m ($(( $(date +%s) - ts ))s): $(sed -n "${line}p" "$ROOT/$f" | sed 's/^ *//')"
  else
    killed=$((killed + 1))
    why=$(grep -oE '(shared|global) memory race \([a-z ]+\) on [^,]{0,90}|(shared memory [a-z]+ of [^,]{0,90}, .{0,20})?before any thread of the block wrote|divergent __syncthreads|mona emu: [^[]{0,80}|AssertionError|Mismatched elements' "$log" | head -n 1 || true)
    why=${why:-a test failed}
    echo "killed   $m ($(( $(date +%s) - ts ))s): $why"
  fi
  cp "$work/pristine/${f#csrc/}" "$work/csrc/${f#csrc/}"
done

total=${#mutants[@]}
echo "mutation score: $killed/$total barrier mutants killed ($(( 100 * killed / (total > 0 ? total : 1) ))%) in $(( $(date +%s) - t0 ))s"
if [ "${#survived[@]}" -gt 0 ]; then
  echo "surviving mutants (a barrier whose removal no emulated test notices): ${survived[*]}"
  exit 1
fi
