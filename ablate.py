"""The paper's comparisons over several seeds on mini-LIBERO: every stage script run as a subprocess, with the same
flags a user would type, then one table of means and 95 % intervals over seeds.

Reads `--data` (and `--base`, the pretrained backbone every chain starts from); writes `--out DIR`:
`runs/<stage-run>/seed<s>/` (each stage's own output dir), `logs/` (each run's stdout + stderr), `results.md`
(variant × metric, mean [95 % interval] over seeds, seeds listed; then the settings of every variant),
`results.json` (every seed's figures and the summary) and `results.png` (a bar chart; needs matplotlib:
pip install -r requirements-plot.txt).

    python ablate.py --preset smoke --seeds 0 --variants sft,grpo --out /tmp/ablate_smoke   # minutes: plumbing only
    python ablate.py --preset small --seeds 0,1,2 --out out/ablate                          # CPU, hours: see PRESETS
    python ablate.py --preset full --seeds 0,1,2 --out out/ablate_full                      # paper-like sizes, GPU
    python ablate.py --preset small --variants base,sft,grpo --dry-run                      # print the commands only

Resumable: a run whose `metrics.json` exists is skipped, and every command gets `--resume`, so an interrupted
ablation picks up inside the run it stopped in (evaluations keep their finished episodes). Runs are shared
between variants: the SFT model of seed s serves every chain of seed s, and a variant whose flags equal
another's (group-8 when the preset's group is 8) reuses its runs instead of repeating them.

Variants (the table VARIANTS below; `--variants` picks a comma list, default all):

  variant          backbone chain under the VLA                 changed flags                paper
  base             --base, no training (tiny-vl)                –                            Tab. 2 row 1
  sft              sft.py                                       –                            Tab. 2, RoboAlign w/o RL
  grpo             sft.py → grpo.py                             –  (prefix reward)           Tab. 2, RoboAlign
  ecot             sft.py → sft.py --episodes stage2            --mix reason=1, 1 epoch      Tab. 7, ECoT-style SFT
  reward-l1        sft.py → grpo.py                             grpo --reward l1             Tab. 6 stand-in
  reward-format    sft.py → grpo.py                             grpo --format-weight 1.0     Tab. 6 stand-in (format only)
  vla-reasoning    sft.py → grpo.py                             vla --prompt reasoning       reviewers' "mask the CoT"
  group-2/4/8      sft.py → grpo.py                             grpo --group 2 | 4 | 8       GRPO group size

Every chain ends in `vla_train.py --backbone <chain's last dir>` and `eval_libero.py --policy <vla dir>`.
Metrics per variant: closed-loop success (average over suites and per suite), the VLA's held-out action L1 (and the
mean-action baseline), and for trained backbones their held-out prefix ratio r_a and direction accuracy.

Honest caveats. `vla-reasoning` gives the backbone the reasoning prompt but still one forward pass: vla_train.py
never generates the chain of thought at control time, so "instruction" vs "reasoning" compares what the backbone
reads, not CoT on vs masked. The reward variants stand in for Tab. 6, which changes the RL *target* (language,
visual, action) rather than the reward shape. The group-size variants keep the prompts per round fixed, so larger
G also means more completions (compute) per round. The interval over seeds is a Student-t interval (n − 1 degrees
of freedom); with one seed there is none.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import config
from config import arg, read_json, write_json, write_text

ROOT = os.path.dirname(os.path.abspath(__file__))


@dataclass
class Config:
    out: str = arg("out/ablate", "output directory (runs/, logs/, results.md/json/png)")
    preset: str = arg("small", "stage sizes: smoke (plumbing, seconds) | small (CPU, hours) | full (paper-like, GPU)")
    seeds: str = arg("0,1,2", "comma-separated seeds; every variant runs once per seed (≥ 3 for an interval)")
    variants: str = arg("all", "comma-separated variant names (see the docstring) or all")
    data: str = arg("out/demos", "demonstration dataset, shared by every run")
    base: str = arg("assets/tiny-vl", "the pretrained backbone every chain starts from (the paper's Qwen2.5-VL-7B-Instruct)")
    fast: str = arg("", "FAST tokenizer dir for sft.py --fast ('' = the one inside --base)")
    dry_run: bool = arg(False, "print the plan (one command per run) and exit")
    plot: bool = arg(True, "write results.png (needs matplotlib: pip install -r requirements-plot.txt)")
    keep_going: bool = arg(False, "on a failed run, skip the variants that need it and go on")


def parse_config(argv=None) -> Config:
    return config.parse_config(Config, argv, __doc__)


# ----------------------------------------------------------------------------- what runs
# Stage flags per preset. smoke: every stage for a few steps (the test; minutes on the real demos, ~1 min on the
# test fixture). small: ~35-40 min per seed for all 10 variants (25 distinct runs: 1 SFT, 4 GRPO, 1 ECoT, 9 VLAs of
# ~1.5 min, 9 evaluations of 40 episodes), so ~2 h for 3 seeds on the 2-core CPU (measured in two parts: 49 + 67
# min, README "Ablation results"). full: each stage's defaults except the paper's GRPO epoch and group size and the
# LIBERO protocol's 50 trials per task (tiny model; the 7B recipes are in each stage's docstring).
PRESETS = {
    "smoke": {
        "sft":  "--steps 2 --global-batch 8 --micro-batch 4 --eval-prompts 4 --max-new-tokens 8 --stage2-frac 0.3",
        "ecot": "--mix reason=1 --steps 2 --global-batch 8 --micro-batch 4 --eval-prompts 4 --max-new-tokens 8",
        "grpo": "--steps 1 --rollout-batch 2 --update-batch 2 --group 2 --max-new-tokens 8 --eval-prompts 2",
        "vla":  "--steps 5 --frame-stride 20 --val-every 0 --d-model 32 --n-layers 1",
        "eval": "--suite spatial --tasks 0 --trials-per-task 1 --max-steps 10 --num-envs 1",
    },
    "small": {
        "sft":  "--steps 100 --eval-prompts 48",
        "ecot": "--mix reason=1 --steps 0 --epochs 1 --eval-prompts 48",
        "grpo": "--steps 20 --group 8 --eval-prompts 64",
        "vla":  "--steps 500 --frame-stride 8 --val-every 0",
        "eval": "--suite all --trials-per-task 1 --num-envs 8",
    },
    "full": {
        "sft":  "",
        "ecot": "--mix reason=1 --steps 0 --epochs 1",
        "grpo": "--steps 0 --group 5",
        "vla":  "",
        "eval": "--suite all --trials-per-task 50 --num-envs 8",
    },
}

# variant: (chain, extra flags per stage, paper reference). chain: base | sft | grpo | ecot (the backbone under the VLA)
VARIANTS = {
    "base":          ("base", {},                                    "Tab. 2 row 1: the MLLM without SFT or RL"),
    "sft":           ("sft",  {},                                    "Tab. 2: RoboAlign w/o RL (SFT only)"),
    "grpo":          ("grpo", {},                                    "Tab. 2: RoboAlign (SFT + GRPO, prefix reward)"),
    "ecot":          ("ecot", {},                                    "Tab. 7: one more SFT epoch on GRPO's prompts"),
    "reward-l1":     ("grpo", {"grpo": "--reward l1"},               "Tab. 6 stand-in: decoded-action L1 reward"),
    "reward-format": ("grpo", {"grpo": "--format-weight 1.0"},       "Tab. 6 stand-in: format reward only"),
    "vla-reasoning": ("grpo", {"vla": "--prompt reasoning"},         "VLA reads the reasoning prompt (CoT not generated)"),
    "group-2":       ("grpo", {"grpo": "--group 2"},                 "GRPO group size G = 2"),
    "group-4":       ("grpo", {"grpo": "--group 4"},                 "GRPO group size G = 4"),
    "group-8":       ("grpo", {"grpo": "--group 8"},                 "GRPO group size G = 8"),
}


@dataclass
class Run:
    key: str              # runs/<key>/seed<s>: the stage and the flags that make it differ
    seed: int
    cmd: list             # argv after the python executable
    out: str
    needs: list           # out dirs of the runs this one reads


def flag_dict(*flag_strings: str) -> dict:
    """Flag strings → {--flag: [values]}; a later --flag replaces an earlier one (keeping the first position)."""
    items: dict[str, list[str]] = {}
    for s in flag_strings:
        toks = s.split()
        i = 0
        while i < len(toks):
            if not toks[i].startswith("--"):
                raise SystemExit(f"ablate.py: expected a --flag, got {toks[i]!r} in {s!r}")
            j = i + 1
            while j < len(toks) and not toks[j].startswith("--"):
                j += 1
            items[toks[i]] = toks[i + 1:j]
            i = j
    return items


def merge_flags(*flag_strings: str) -> list[str]:
    """'--group 2 --steps 1' + '--group 8' → ['--group', '8', '--steps', '1']."""
    return [t for k, v in flag_dict(*flag_strings).items() for t in (k, *v)]


def run_key(stage: str, preset_flags: str, extra: str) -> str:
    """Name of a stage run: the stage plus the flags whose value differs from the preset's, so variants with the
    same effective flags share a run: '--group 8' on a preset with --group 8 → 'grpo'; '--reward l1' →
    'grpo_reward-l1'."""
    base, merged = flag_dict(preset_flags), flag_dict(preset_flags, extra)
    changed = [(k, v) for k, v in merged.items() if base.get(k) != v]
    return stage + "".join(f"_{k.lstrip('-')}" + "".join("-" + x.replace("/", "-") for x in v) for k, v in changed)


def variant_plan(cfg: Config, variant: str, seed: int) -> list[Run]:
    """The runs of one variant and seed, in order: [sft, (grpo | ecot)], vla, eval."""
    chain, extra, _ = VARIANTS[variant]
    P = PRESETS[cfg.preset]
    d = lambda key: os.path.join(cfg.out, "runs", key, f"seed{seed}")
    runs, backbone = [], cfg.base
    if chain != "base":
        sft_out = d("sft")
        runs.append(Run("sft", seed, ["sft.py", "--model", cfg.base, "--data", cfg.data, "--out", sft_out,
                                      "--seed", str(seed), *(["--fast", cfg.fast] if cfg.fast else []),
                                      *merge_flags(P["sft"]), "--resume"], sft_out, []))
        backbone = sft_out
    if chain in ("grpo", "ecot"):
        stage = chain
        key = run_key(stage, P[stage], extra.get(stage, ""))
        out = d(key)
        if stage == "grpo":
            cmd = ["grpo.py", "--init", backbone, "--out", out, "--data", cfg.data]
        else:
            cmd = ["sft.py", "--model", backbone, "--episodes", "stage2", "--data", cfg.data, "--out", out]
        runs.append(Run(key, seed, cmd + ["--seed", str(seed), *merge_flags(P[stage], extra.get(stage, "")), "--resume"],
                        out, [backbone]))
        backbone = out
    chain_key = "base" if chain == "base" else runs[-1].key
    vla_key = f"vla-{chain_key}" + run_key("", P["vla"], extra.get("vla", ""))
    vla_out = d(vla_key)
    runs.append(Run(vla_key, seed, ["vla_train.py", "--backbone", backbone, "--data", cfg.data, "--out", vla_out,
                                    "--seed", str(seed), *merge_flags(P["vla"], extra.get("vla", "")), "--resume"],
                    vla_out, [backbone] if chain != "base" else []))
    ev_out = d("eval-" + vla_key)
    runs.append(Run("eval-" + vla_key, seed, ["eval_libero.py", "--policy", vla_out, "--out", ev_out,
                                              *merge_flags(P["eval"]), "--resume"], ev_out, [vla_out]))
    return runs


def selected(cfg: Config) -> list[str]:
    names = list(VARIANTS) if cfg.variants == "all" else [v.strip() for v in cfg.variants.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad or not names:
        raise SystemExit(f"ablate.py: unknown variant(s) {bad}; choose from {', '.join(VARIANTS)} or all")
    return names


def parse_seeds(s: str) -> list[int]:
    try:
        seeds = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"ablate.py: --seeds {s!r}: expected comma-separated integers")
    if not seeds:
        raise SystemExit("ablate.py: --seeds is empty")
    return seeds


# ----------------------------------------------------------------------------- statistics
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,  # two-sided 95 % t, df 1..30
        2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
        2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def mean_ci_t(values) -> list:
    """[mean, low, high, n] over seeds: Student-t 95 % interval; low = high = mean when n < 2."""
    x = [float(v) for v in values if v is not None and not math.isnan(v)]
    n = len(x)
    if n == 0:
        return [float("nan")] * 3 + [0]
    m = sum(x) / n
    if n < 2:
        return [m, m, m, 1]
    sd = math.sqrt(sum((v - m) ** 2 for v in x) / (n - 1))
    h = (T975[n - 2] if n - 1 <= len(T975) else 1.96) * sd / math.sqrt(n)
    return [m, m - h, m + h, n]


def figures(runs: list[Run]) -> dict:
    """The figures of one variant and seed, from its runs' metrics.json files (None where absent)."""
    ev, vla = read_json(os.path.join(runs[-1].out, "metrics.json")), read_json(os.path.join(runs[-2].out, "metrics.json"))
    bb = read_json(os.path.join(runs[-3].out, "metrics.json")) if len(runs) > 2 else None
    out = {"success": ev["average"] if ev else None}
    for s, v in (ev or {}).get("success", {}).items():
        out[f"success/{s}"] = v
    out["val_l1"] = vla.get("val_l1") if vla else None
    out["mean_action_l1"] = vla.get("mean_action_l1") if vla else None
    after = (bb or {}).get("after") or {}
    out["backbone_prefix"] = after.get("reason/prefix", [None])[0]
    out["backbone_direction"] = after.get("reason/direction", [None])[0]
    return out


# ----------------------------------------------------------------------------- output
METRIC_NAMES = {"success": "success (avg)", "val_l1": "VLA val L1", "mean_action_l1": "mean-action L1",
                "backbone_prefix": "backbone r_a", "backbone_direction": "backbone direction"}


def fmt(v) -> str:
    if v[3] == 0:
        return "–"
    return f"{v[0]:.3f}" if v[3] < 2 else f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"


def results_markdown(cfg: Config, summary: dict, seeds_done: dict, plans: dict) -> str:
    metrics = [m for m in ["success", *sorted({k for s in summary.values() for k in s if k.startswith("success/")}),
                           "val_l1", "mean_action_l1", "backbone_prefix", "backbone_direction"]
               if any(m in s for s in summary.values())]
    L = [f"# Ablations on mini-LIBERO (preset `{cfg.preset}`)\n",
         "Mean over seeds [Student-t 95 % interval]; a cell without an interval has one seed; – = not measured. "
         "Success is the closed-loop rate (eval_libero.py); L1 in normalised action units on held-out frames; "
         "r_a and direction are the backbone's held-out reasoning → FAST figures (sft.py / grpo.py `after`).\n",
         "| variant | " + " | ".join(METRIC_NAMES.get(m, m) for m in metrics) + " | seeds |",
         "|---" * (len(metrics) + 2) + "|"]
    for v, s in summary.items():
        L.append(f"| {v} | " + " | ".join(fmt(s[m]) if m in s else "–" for m in metrics) +
                 f" | {','.join(map(str, seeds_done[v])) or 'none'} |")
    L += ["\n## Settings\n", f"Preset `{cfg.preset}`, base backbone `{cfg.base}`, demos `{cfg.data}`.\n",
          "| stage | preset flags |", "|---|---|"]
    L += [f"| {st} | `{fl or '(defaults)'}` |" for st, fl in PRESETS[cfg.preset].items()]
    L += ["\n| variant | paper | runs (key: changed flags) |", "|---|---|---|"]
    for v in summary:
        L.append(f"| {v} | {VARIANTS[v][2]} | " + " → ".join(f"`{r.key}`" for r in plans[v]) + " |")
    return "\n".join(L) + "\n"


def plot(summary: dict, path: str) -> bool:
    """Bar chart of the average success and the VLA's val L1 per variant, with the seed intervals."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("ablate.py: no results.png: matplotlib is missing (pip install -r requirements-plot.txt)")
        return False
    names = list(summary)
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.1 * len(names) + 2), 3.6))
    for ax, m, title in zip(axes, ("success", "val_l1"), ("closed-loop success (avg over suites)", "VLA held-out action L1")):
        vals = [summary[n].get(m, [float("nan")] * 3 + [0]) for n in names]
        mean = [v[0] for v in vals]
        err = [[max(v[0] - v[1], 0) for v in vals], [max(v[2] - v[0], 0) for v in vals]]
        ax.bar(range(len(names)), mean, yerr=err, capsize=3, color="#4C72B0")
        ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
    axes[0].set_ylim(0, 1)
    base = [summary[n]["mean_action_l1"][0] for n in names if summary[n].get("mean_action_l1", [0, 0, 0, 0])[3]]
    if base:                                          # the same for every variant: the demos' mean chunk
        axes[1].axhline(sum(base) / len(base), color="k", ls="--", lw=1, label="mean-action baseline")
        axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=120)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)
    return True


# ----------------------------------------------------------------------------- main
def execute(run: Run, log_dir: str) -> float:
    """Run one stage as a subprocess (its output to logs/); returns seconds. Raises SystemExit on failure."""
    os.makedirs(log_dir, exist_ok=True)
    log = os.path.join(log_dir, f"{run.key}_seed{run.seed}.log")
    t0 = time.time()
    with open(log, "w") as f:
        f.write("$ python " + " ".join(run.cmd) + "\n")
        f.flush()
        p = subprocess.run([sys.executable, os.path.join(ROOT, run.cmd[0]), *run.cmd[1:]], stdout=f, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        with open(log) as f:
            tail = f.read()[-1500:]
        raise SystemExit(f"ablate.py: {run.cmd[0]} failed (exit {p.returncode}) for {run.out}; log {log}:\n{tail}")
    return time.time() - t0


def main(cfg: Config) -> dict:
    if cfg.preset not in PRESETS:
        raise SystemExit(f"ablate.py: --preset {cfg.preset!r}: choose {' | '.join(PRESETS)}")
    names, seeds = selected(cfg), parse_seeds(cfg.seeds)
    if len(seeds) < 3 and cfg.preset != "smoke":
        print(f"ablate.py: note: {len(seeds)} seed(s); the intervals need ≥ 3 to mean much")
    plans = {(v, s): variant_plan(cfg, v, s) for v in names for s in seeds}
    order, seen = [], set()                                     # every distinct run once, dependencies first
    for s in seeds:
        for v in names:
            for r in plans[(v, s)]:
                if r.out not in seen:
                    seen.add(r.out)
                    order.append(r)
    print(f"ablate.py | preset {cfg.preset} | {len(names)} variants × {len(seeds)} seeds | {len(order)} distinct runs")
    if cfg.dry_run:
        for r in order:
            print(("[done] " if os.path.isfile(os.path.join(r.out, "metrics.json")) else "") + "python " + " ".join(r.cmd))
        return {}
    failed, t_start = set(), time.time()
    for i, r in enumerate(order):
        tag = f"[{i + 1}/{len(order)}] {r.key} seed {r.seed}"
        if os.path.isfile(os.path.join(r.out, "metrics.json")):
            print(f"{tag}: done already, skipped")
            continue
        if any(n in failed for n in r.needs):
            print(f"{tag}: skipped (an input run failed)")
            failed.add(r.out)
            continue
        print(f"{tag}: python {' '.join(r.cmd)}", flush=True)
        try:
            print(f"{tag}: {execute(r, os.path.join(cfg.out, 'logs')):.0f}s", flush=True)
        except SystemExit as e:
            if not cfg.keep_going:
                raise
            print(str(e))
            failed.add(r.out)

    per_seed = {v: {s: figures(plans[(v, s)]) for s in seeds} for v in names}
    done = {v: [s for s in seeds if per_seed[v][s]["success"] is not None] for v in names}
    keys = lambda v: list(dict.fromkeys(m for s in seeds for m in per_seed[v][s]))   # union: a failed seed lacks suites
    summary = {v: {m: mean_ci_t([per_seed[v][s].get(m) for s in seeds]) for m in keys(v)} for v in names}
    os.makedirs(cfg.out, exist_ok=True)
    res = {"config": asdict(cfg), "preset": PRESETS[cfg.preset],
           "variants": {v: {"chain": VARIANTS[v][0], "extra": VARIANTS[v][1], "paper": VARIANTS[v][2],
                            "runs": [r.key for r in plans[(v, seeds[0])]]} for v in names},
           "per_seed": per_seed, "summary": summary, "seconds": round(time.time() - t_start, 1)}
    write_json(os.path.join(cfg.out, "results.json"), res)
    md = results_markdown(cfg, summary, done, {v: plans[(v, seeds[0])] for v in names})
    write_text(os.path.join(cfg.out, "results.md"), md)
    if cfg.plot:
        plot(summary, os.path.join(cfg.out, "results.png"))
    print(md)
    print(f"wrote {cfg.out}/results.md, results.json ({time.time() - t_start:.0f}s)")
    return res


if __name__ == "__main__":
    main(parse_config())
