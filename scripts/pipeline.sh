#!/usr/bin/env bash
# The README's first command: set up (first run only), then run every stage on mini-LIBERO into out/.
# Each stage reads the previous stage's directory and writes its own; the time per stage is printed at the end,
# then one table (scripts/summary.py): success per backbone (SFT, SFT+GRPO, expert) and suite, and each stage's figure.
# Stage sizes here are each file's defaults except where a flag says otherwise (see the README's stage table);
# SIZE=small runs 100 SFT steps and 12 GRPO rounds (default 200 and 40; in a run measured with fresh action rows,
# 80 steps left the format rate at 0.22 where 100 reached 0.97), trains a 300-step VLA head on every 16th frame and scores 32 held-out prompts per evaluation
# (intervals ~1.7x wider): the 10-minute setting. The demos stay at 10 per task: the FAST tokenizer fitted on them is
# the one the shipped backbone was pretrained with (fitted on fewer demos its merges differ, and the backbone's
# action rows would mean nothing).
#
# After GRPO the work forks: the VLA on the SFT backbone and the VLA on the GRPO backbone (each then evaluated)
# read nothing of each other's, so the two branches run side by side with one thread each: the VLA head gains little
# from a second thread (99 s on one, 108 s on two, README), while GRPO gains ~1.6x (4.9 against 8.1 s a round), so
# SFT and GRPO keep both. The side branch's output goes to $OUT/side.log.
. "$(dirname "$0")/setup.sh"
OUT=${OUT:-out}
case ${SIZE:-default} in        # extra flags per stage (a later flag wins over a file's default)
  default) sft_flags=(); grpo_flags=(); vla_flags=() ;;
  small)   sft_flags=(--steps 100 --eval-prompts 32); grpo_flags=(--steps 12 --eval-prompts 32)
           vla_flags=(--steps 300 --frame-stride 16) ;;
  *) echo "pipeline.sh: SIZE=$SIZE: expected default or small" >&2; exit 2 ;;
esac
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}     # 2 threads degrade gracefully if anything else runs
mkdir -p "$OUT"
times="$OUT/times.txt"
: > "$times"
t_all=$SECONDS
stage() {  # stage NAME COMMAND...: run it, append its wall time to $times
  local name=$1; shift
  echo; echo "=== $name: $*"
  local t0=$SECONDS
  "$@"
  printf '%-12s %5ds\n' "$name" $((SECONDS - t0)) >> "$times"
}
stage demos    python -m data.mini_libero demos --out "$OUT/demos"
stage world    python -m data.mini_libero stats --data "$OUT/demos"
stage fast     python fast_tokenizer.py --data "$OUT/demos" --out "$OUT/fast"
stage sft      python sft.py --model assets/tiny-vl --data "$OUT/demos" --fast "$OUT/fast" --out "$OUT/sft" "${sft_flags[@]}"
stage grpo     python grpo.py --init "$OUT/sft" --out "$OUT/grpo" "${grpo_flags[@]}"

export OMP_NUM_THREADS=1                               # two branches on two cores from here
(   # the paper's comparison in miniature: the same VLA recipe on the SFT backbone (here) and on SFT+GRPO (below)
    stage vla_sft  python vla_train.py --backbone "$OUT/sft" --data "$OUT/demos" --out "$OUT/vla_sft" "${vla_flags[@]}"
    stage eval_sft python eval_libero.py --policy "$OUT/vla_sft" --suite all --trials-per-task 1 --num-envs 8 --out "$OUT/eval_sft"
    stage expert   python eval_libero.py --policy expert --suite all --trials-per-task 10 --out "$OUT/eval_expert"
) > "$OUT/side.log" 2>&1 &
side=$!
trap 'kill $side 2>/dev/null || true' EXIT              # a failing main branch takes the side branch down too
echo; echo "=== side branch (vla_sft, eval_sft, expert) started in the background: $OUT/side.log"
stage vla      python vla_train.py --backbone "$OUT/grpo" --data "$OUT/demos" --out "$OUT/vla" "${vla_flags[@]}"
stage eval     python eval_libero.py --policy "$OUT/vla" --suite all --trials-per-task 1 --num-envs 8 --out "$OUT/eval"
wait "$side" || { echo "the side branch failed; its output: $OUT/side.log" >&2; exit 1; }

echo; echo "=== time per stage (vla_sft, eval_sft and expert ran beside vla and eval)"
cat "$times"; printf '%-12s %5ds\n' total $((SECONDS - t_all))
echo; python scripts/summary.py --root "$OUT" --out "$OUT/summary.md"     # backbone x suite success + each stage's figure
