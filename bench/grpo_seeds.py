"""GRPO's held-out gain over several training seeds: each seed's paired change and the change pooled over seeds.

Every run is evaluated on the same held-out reasoning prompts as grpo.py's own evaluation (the val split of the
--before checkpoint's data, chosen the same way), greedy, with the true images. Per seed: after − before per
prompt, mean and 95 % interval over prompts (what grpo.py's metrics.json calls `change`). Pooled: each prompt's
change averaged over the seeds, then the interval over prompts (prompts are the unit; seeds are averaged), and the
seed-level interval (t over the seeds' means: the one to quote when seed-to-seed spread is the question).

    python bench/grpo_seeds.py --before out/sft --after out/grpo_s0,out/grpo_s1,out/grpo_s2
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import grpo  # noqa: E402
from config import arg, parse_config as parse_flags, write_json  # noqa: E402
from model import load_backbone  # noqa: E402
from sft import evaluate, mean_ci  # noqa: E402

T_975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}   # Student t, 95 % two-sided


@dataclass
class Config:
    before: str = arg("out/sft", "the checkpoint GRPO started from (its stage2.json names the data)")
    after: str = arg("out/grpo", "comma list of grpo.py output directories, one per training seed")
    eval_prompts: int = arg(384, "held-out reasoning prompts (grpo.py's --eval-prompts)")
    metrics: str = arg("reason/prefix,reason/exact,reason/direction", "comma list of the figures compared")
    out: str = arg("", "also write the figures to this JSON file")


def seed_interval(means: list[float]) -> list[float]:
    """[mean, lo, hi] over seeds with Student's t (n − 1 degrees of freedom); a single seed gives no interval."""
    m = float(np.mean(means))
    if len(means) < 2:
        return [m, float("nan"), float("nan")]
    h = T_975.get(len(means) - 1, 1.96) * float(np.std(means, ddof=1)) / np.sqrt(len(means))
    return [m, m - h, m + h]


def main(cfg: Config) -> dict:
    gcfg = grpo.Config(init=cfg.before, eval_prompts=cfg.eval_prompts)
    stage2 = grpo.read_stage2_of(cfg.before)
    runs, metrics, rows = cfg.after.split(","), cfg.metrics.split(","), {}
    for d in [cfg.before, *runs]:
        model, proc, fast, vocab = load_backbone(d)
        _, val, frames = grpo.load_prompts(gcfg, stage2, fast)
        rows[d] = evaluate(model, proc, vocab, fast, val, frames, gcfg.max_new_tokens, per_prompt=True)[1]
        print(f"{d}: " + ", ".join(f"{k} {np.mean(rows[d][k]):.3f}" for k in metrics), flush=True)
    result = {"prompts": len(rows[cfg.before][metrics[0]]), "runs": runs, "per_seed": {}, "pooled": {}, "over_seeds": {}}
    for k in metrics:
        diffs = np.array([np.subtract(rows[d][k], rows[cfg.before][k]) for d in runs])      # [seeds, prompts]
        result["per_seed"][k] = [mean_ci(x) for x in diffs]
        result["pooled"][k] = mean_ci(diffs.mean(0))
        result["over_seeds"][k] = seed_interval(diffs.mean(1).tolist())
        f = lambda v: f"{v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}]"
        print(f"{k}: per seed " + ", ".join(f(v) for v in result["per_seed"][k]) +
              f" | pooled over prompts {f(result['pooled'][k])} | over seeds {f(result['over_seeds'][k])}")
    if cfg.out:
        write_json(cfg.out, result)
    return result


if __name__ == "__main__":
    main(parse_flags(Config, None, __doc__))
