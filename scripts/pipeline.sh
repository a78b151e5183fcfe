#!/usr/bin/env bash
# The README's first command: set up (first run only), then run every stage on mini-LIBERO into out/.
# Each stage reads the previous stage's directory and writes its own; the time per stage is printed at the end,
# then one table (scripts/summary.py): closed-loop success of the VLA on the SFT and on the SFT+GRPO backbone per
# suite, beside the replay floor (a same-task demo replayed open-loop, from the same init states) and the expert,
# and each stage's key figure.
#
# Sizes. The default is the run that fits in 10 minutes on 2 cores (README: per-stage times): 20 demos per task at
# LIBERO's layouts, 100 SFT steps and 10 GRPO rounds with 64 held-out prompts per evaluation, a VLA head of 800
# steps on every 10th frame, and 3 trials per task (120 episodes) per VLA (measured: 587 s in all). SIZE=full
# runs every stage at its own defaults (50 demos per task, LIBERO's count; 10 trials per task): roughly half an hour.
#
# After GRPO the work forks: the VLA on the SFT backbone and the VLA on the GRPO backbone (each then evaluated)
# read nothing of each other's, so the two branches run side by side with one thread each (a small head gains
# little from a second thread), while SFT and GRPO keep both. The side branch's output goes to $OUT/side.log.
. "$(dirname "$0")/setup.sh"
OUT=${OUT:-out}
case ${SIZE:-default} in        # extra flags per stage (a later flag wins over a file's default)
  default) demo_flags=(--per-task 20); sft_flags=(--steps 100 --eval-prompts 64); grpo_flags=(--steps 10 --eval-prompts 64)
           vla_flags=(--steps 800 --frame-stride 10); trials=3 ;;
  full)    demo_flags=(--per-task 50); sft_flags=(); grpo_flags=(); vla_flags=(); trials=10 ;;
  *) echo "pipeline.sh: SIZE=$SIZE: expected default or full" >&2; exit 2 ;;
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
stage demos    python -m data.mini_libero demos --out "$OUT/demos" "${demo_flags[@]}"
stage world    python -m data.mini_libero stats --data "$OUT/demos"
stage fast     python fast_tokenizer.py --data "$OUT/demos" --out "$OUT/fast"
stage sft      python sft.py --model assets/tiny-vl --data "$OUT/demos" --fast "$OUT/fast" --out "$OUT/sft" "${sft_flags[@]}"
stage grpo     python grpo.py --init "$OUT/sft" --out "$OUT/grpo" "${grpo_flags[@]}"

export OMP_NUM_THREADS=1                               # two branches on two cores from here
(   # the paper's comparison in miniature: the same VLA recipe on the SFT backbone (here) and on SFT+GRPO (below)
    stage vla_sft  python vla_train.py --backbone "$OUT/sft" --data "$OUT/demos" --out "$OUT/vla_sft" "${vla_flags[@]}"
    stage eval_sft python eval_libero.py --policy "$OUT/vla_sft" --trials-per-task $trials --num-envs 20 --out "$OUT/eval_sft"
    stage replay   python eval_libero.py --policy replay --data "$OUT/demos" --trials-per-task $trials --out "$OUT/eval_replay"
    stage expert   python eval_libero.py --policy expert --trials-per-task $trials --out "$OUT/eval_expert"
) > "$OUT/side.log" 2>&1 &
side=$!
trap 'kill $side 2>/dev/null || true' EXIT              # a failing main branch takes the side branch down too
echo; echo "=== side branch (vla_sft, eval_sft, replay, expert) started in the background: $OUT/side.log"
stage vla      python vla_train.py --backbone "$OUT/grpo" --data "$OUT/demos" --out "$OUT/vla" "${vla_flags[@]}"
stage eval     python eval_libero.py --policy "$OUT/vla" --trials-per-task $trials --num-envs 20 --out "$OUT/eval"
wait "$side" || { echo "the side branch failed; its output: $OUT/side.log" >&2; exit 1; }

echo; echo "=== time per stage (vla_sft, eval_sft, replay and expert ran beside vla and eval)"
cat "$times"; printf '%-12s %5ds\n' total $((SECONDS - t_all))
echo; python scripts/summary.py --root "$OUT" --out "$OUT/summary.md"     # backbone x suite success + each stage's figure
