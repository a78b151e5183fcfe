#!/usr/bin/env bash
# The README's first command: set up (first run only), then run every stage on mini-LIBERO into out/.
# Each stage reads the previous stage's directory and writes its own; the time per stage is printed at the end.
. "$(dirname "$0")/setup.sh"
OUT=${OUT:-out}
times=()
stage() {  # stage NAME COMMAND...: run it, remember its wall time
  local name=$1; shift
  echo; echo "=== $name: $*"
  local t0=$SECONDS
  "$@"
  times+=("$(printf '%-16s %4ds' "$name" $((SECONDS - t0)))")
}
stage demos      python -m data.mini_libero demos --out "$OUT/demos"
stage world      python -m data.mini_libero stats --demos "$OUT/demos"
stage expert     python -m data.mini_libero expert --trials 10
stage fast       python fast_tokenizer.py --demos "$OUT/demos" --out "$OUT/fast"
echo; echo "=== time per stage"; printf '%s\n' "${times[@]}"
