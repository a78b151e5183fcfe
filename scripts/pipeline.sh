#!/usr/bin/env bash
# The README's first command: set up (first run only), then run every stage on mini-LIBERO into out/.
# Each stage reads the previous stage's directory and writes its own; the time per stage is printed at the end,
# then one table (scripts/summary.py): success per backbone (SFT, SFT+GRPO, expert) and suite, and each stage's figure.
# Stage sizes here are each file's defaults except where a flag says otherwise (see the README's stage table).
. "$(dirname "$0")/setup.sh"
OUT=${OUT:-out}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}     # 2 threads degrade gracefully if anything else runs
times=()
stage() {  # stage NAME COMMAND...: run it, remember its wall time
  local name=$1; shift
  echo; echo "=== $name: $*"
  local t0=$SECONDS
  "$@"
  times+=("$(printf '%-12s %5ds' "$name" $((SECONDS - t0)))")
}
stage demos    python -m data.mini_libero demos --out "$OUT/demos"
stage world    python -m data.mini_libero stats --data "$OUT/demos"
stage fast     python fast_tokenizer.py --data "$OUT/demos" --out "$OUT/fast"
stage sft      python sft.py --model assets/tiny-vl --data "$OUT/demos" --fast "$OUT/fast" --out "$OUT/sft"
stage grpo     python grpo.py --init "$OUT/sft" --out "$OUT/grpo"
# the paper's comparison in miniature: the same VLA recipe on the SFT and on the SFT+GRPO backbone
stage vla_sft  python vla_train.py --backbone "$OUT/sft" --data "$OUT/demos" --out "$OUT/vla_sft"
stage vla      python vla_train.py --backbone "$OUT/grpo" --data "$OUT/demos" --out "$OUT/vla"
stage eval_sft python eval_libero.py --policy "$OUT/vla_sft" --suite all --trials-per-task 1 --num-envs 8 --out "$OUT/eval_sft"
stage eval     python eval_libero.py --policy "$OUT/vla" --suite all --trials-per-task 1 --num-envs 8 --out "$OUT/eval"
stage expert   python eval_libero.py --policy expert --suite all --trials-per-task 10 --out "$OUT/eval_expert"
echo; echo "=== time per stage"; printf '%s\n' "${times[@]}"
echo; python scripts/summary.py --root "$OUT" --out "$OUT/summary.md"     # backbone x suite success + each stage's figure
