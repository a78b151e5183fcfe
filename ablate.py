"""The paper's comparisons over several seeds on mini-LIBERO, each row beside the floor and ceiling of its layout:
every stage script run as a subprocess with the flags a user would type, then one table per layout of means and
95 % intervals over seeds, and the paired differences each comparison could resolve.

Reads `--base` (the pretrained backbone every chain starts from) and writes `--out DIR`: `demos/<layout>/` (made
unless `--layout-data` names them), `runs/<backbone run>/seed<s>/` (SFT, GRPO, ECoT: shared by every layout),
`runs/<layout>/<vla or eval run>/seed<s>/`, `logs/`, `results.md` (per layout: variant × metric, then the
comparisons, then the settings), `results.json` (every seed's figures and the summary) and `results.png`
(needs matplotlib: pip install -r requirements-plot.txt).

    python ablate.py --preset smoke --seeds 0 --variants sft,ecot --layouts libero --out /tmp/ablate_smoke  # plumbing
    python bench/calibration.py --layouts libero,libero-x3 --policies replay,blind,oracle --out out/calibration
    python ablate.py --seeds 0,1,2 --references out/calibration --out out/ablate      # CPU: ~2.5 core-hours a seed
    python ablate.py --seeds 0 --out out/ablate & python ablate.py --seeds 1 --out out/ablate   # seeds side by side
    python ablate.py --seeds 0,1,2 --out out/ablate --collect-only                   # tables from what has finished

Resumable: a run whose `metrics.json` exists is skipped, and every command gets `--resume`, so an interrupted
ablation picks up inside the run it stopped in (evaluations keep their finished episodes). Runs are shared: the
backbone chain of seed s serves both layouts, and a variant whose flags equal another's reuses its runs.

Variants (VARIANTS below; `--variants` takes a comma list, `paper` (default) or `all`):

  variant          backbone under the VLA                          changed flags              paper
  base             --base, no training                             –                          Tab. 2, the raw MLLM
  sft              sft.py                                          –                          Tab. 2, w/o RL
  grpo             sft.py → grpo.py, action target (FAST prefix)    –                          Tab. 2/6, RoboAlign
  grpo-language    sft.py → grpo.py, multiple-choice movement      grpo --reward choice       Tab. 6, language target
  grpo-visual      sft.py → grpo.py, 2-D gripper waypoints         grpo --reward trace        Tab. 6, visual target
  ecot             sft.py → sft.py on GRPO's episodes, same count  --episodes stage2          Tab. 7, ECoT-style SFT
  vla-reasoning    the grpo backbone; the VLA reads the reasoning  vla --prompt reasoning     CoT masking (control)
  reward-l1, reward-format, group-2/4/8 (not in `paper`): decoded-L1 reward, format reward only, GRPO group size.

One SFT model per seed starts every chain, trained on a mixture that also teaches the choice and trace answer
formats, so the three RL targets start from the same weights and get the same GRPO budget (rounds × prompts ×
group). The ECoT-style run sees as many reasoning → FAST examples as GRPO sees prompts (15 steps × 32 = 30 rounds
× 16), from the same reserved episodes, with supervised targets instead of rewards. Every chain ends in
`vla_train.py` on the layout's demos and `eval_libero.py` at that layout (the LIBERO protocol: all four suites,
trial k from init state k).

Metrics per variant and layout: closed-loop success (average and per suite), the VLA's held-out action L1, and the
backbone's held-out reasoning → FAST prefix ratio r_a and direction accuracy (the base row reads the SFT run's
`before`); the GRPO runs add their training reward r_a, first five rounds → last five. Beside every layout's table:
replay (a policy that never looks), blind (the head fed a blank image) and oracle (the head on privileged state), as
bench/calibration.py measured them at the same layout and trials (`--references`).

Statistics. Over seeds: mean and a Student-t 95 % interval (n − 1 degrees of freedom). With fewer than three seeds
(a t with one degree of freedom says nothing), success gets the Wilson interval over the seeds' pooled episodes
instead (marked ʷ): it holds the trials' noise, not the seeds'. A comparison (e.g. grpo − sft) is paired by seed: the
mean difference and its t interval; with fewer than three seeds, Newcombe's interval for a difference of two pooled
Wilson proportions. Its half-width is the smallest difference the runs could tell from zero.

Honest caveats. `vla-reasoning` gives the backbone the reasoning prompt but still one forward pass: the VLA never
generates a chain of thought at control time, so it compares what the backbone reads, not CoT on vs off. The
group-size variants keep the prompts per round fixed, so a larger G also means more completions per round.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import config
from config import arg, read_json, read_jsonl, write_json, write_text
from eval_libero import wilson_interval

ROOT = os.path.dirname(os.path.abspath(__file__))


@dataclass
class Config:
    out: str = arg("out/ablate", "output directory (demos/, runs/, logs/, results.md/json/png)")
    preset: str = arg("small", "stage sizes: smoke (plumbing, seconds) | small (CPU, the stages' defaults) | full (paper-like, GPU)")
    seeds: str = arg("0,1,2", "comma-separated seeds; every variant runs once per seed (≥ 3 for an interval)")
    variants: str = arg("paper", "comma-separated variant names (see the docstring), paper or all")
    layouts: str = arg("libero,libero-x3", "mini-LIBERO layouts the VLAs are trained and evaluated at (comma list)")
    layout_data: str = arg("", "existing demos per layout, layout=DIR comma list (the others are made under OUT/demos)")
    per_task: int = arg(20, "demos per task when a layout's demos are made here")
    data: str = arg("", "the backbones' (SFT, GRPO) dataset; '' = the first layout's demos")
    base: str = arg("assets/tiny-vl", "the pretrained backbone every chain starts from (the paper's Qwen2.5-VL-7B-Instruct)")
    fast: str = arg("", "FAST tokenizer dir for sft.py --fast ('' = the one inside --base)")
    references: str = arg("out/calibration", "bench/calibration.py's output: replay / blind / oracle per layout")
    dry_run: bool = arg(False, "print the plan (one command per run) and exit")
    collect_only: bool = arg(False, "run nothing: write the tables from the runs that have finished")
    plot: bool = arg(True, "write results.png (needs matplotlib: pip install -r requirements-plot.txt)")
    keep_going: bool = arg(False, "on a failed run, skip the runs that need it and go on")


def parse_config(argv=None) -> Config:
    return config.parse_config(Config, argv, __doc__)


# ----------------------------------------------------------------------------- what runs
# Stage flags per preset. smoke: every stage for a few steps (the test). small: the stages' own CPU defaults with
# the protocol's 10 trials per task; one seed is ~2.5 core-hours (an SFT, three GRPOs and an ECoT run of ~5-10 min
# each, then per layout seven VLA heads of ~10 min and seven 400-episode evaluations of ~8 min). full: each stage's
# defaults except the paper's GRPO epoch and group size and LIBERO's 50 trials per task (the 7B recipes are in
# each stage's docstring).
SFT_MIX = "--mix caption=0.1,vqa=0.1,reason=0.4,fast=0.1,choice=0.15,trace=0.15"
PRESETS = {
    "smoke": {
        "sft":  f"{SFT_MIX} --steps 2 --global-batch 8 --micro-batch 4 --eval-prompts 4 --max-new-tokens 8 --stage2-frac 0.3",
        "ecot": "--mix reason=1 --steps 2 --global-batch 8 --micro-batch 4 --eval-prompts 4 --max-new-tokens 8",
        "grpo": "--steps 1 --rollout-batch 2 --update-batch 2 --group 2 --max-new-tokens 8 --eval-prompts 2",
        "vla":  "--steps 5 --frame-stride 20 --val-every 0 --d-model 32 --n-layers 1",
        "eval": "--suite spatial --tasks 0 --trials-per-task 1 --max-steps 10 --num-envs 1",
    },
    "small": {
        "sft":  SFT_MIX,
        "ecot": "--mix reason=1 --steps 15 --global-batch 32",         # = GRPO's 30 rounds × 16 prompts
        "grpo": "--group 8",                                           # grpo.py's default, named: group-8 shares it
        "vla":  "--val-every 0",
        "eval": "--suite all --trials-per-task 10 --num-envs 20",
    },
    "full": {
        "sft":  SFT_MIX,
        "ecot": "--mix reason=1 --steps 0 --epochs 1",
        "grpo": "--steps 0 --group 5",
        "vla":  "",
        "eval": "--suite all --trials-per-task 50 --num-envs 8",
    },
}

# variant: (chain, extra flags per stage, paper reference). chain: base | sft | grpo | ecot (the backbone under the VLA)
VARIANTS = {
    "base":          ("base", {},                              "Tab. 2: the MLLM without SFT or RL"),
    "sft":           ("sft",  {},                              "Tab. 2: RoboAlign w/o RL (SFT only)"),
    "grpo":          ("grpo", {},                              "Tab. 2/6: RoboAlign, action target (FAST prefix)"),
    "grpo-language": ("grpo", {"grpo": "--reward choice"},     "Tab. 6: language target (movement multiple choice)"),
    "grpo-visual":   ("grpo", {"grpo": "--reward trace"},      "Tab. 6: visual target (2-D gripper waypoints)"),
    "ecot":          ("ecot", {},                              "Tab. 7: SFT on GRPO's episodes instead of RL"),
    "vla-reasoning": ("grpo", {"vla": "--prompt reasoning"},   "CoT masking: the VLA reads the reasoning prompt"),
    "reward-l1":     ("grpo", {"grpo": "--reward l1"},         "decoded-action L1 reward"),
    "reward-format": ("grpo", {"grpo": "--format-weight 1.0"}, "format reward only"),
    "group-2":       ("grpo", {"grpo": "--group 2"},           "GRPO group size G = 2"),
    "group-4":       ("grpo", {"grpo": "--group 4"},           "GRPO group size G = 4"),
    "group-8":       ("grpo", {"grpo": "--group 8"},           "GRPO group size G = 8"),
}
PAPER = ["base", "sft", "grpo", "grpo-language", "grpo-visual", "ecot", "vla-reasoning"]
# (variant, minus variant): the paper's claims as paired differences, with the paper's LIBERO figure (points)
COMPARISONS = {("sft", "base"): "Tab. 2: +4.8", ("grpo", "sft"): "Tab. 2: +8.1", ("grpo", "grpo-language"): "Tab. 6: +3.2",
               ("grpo", "grpo-visual"): "Tab. 6: +1.7", ("grpo", "ecot"): "Tab. 7: +19.1", ("vla-reasoning", "grpo"): "–"}
REFERENCES = ("replay", "blind", "oracle")


@dataclass
class Run:
    key: str              # runs/[<layout>/]<key>/seed<s>: the stage and the flags that make it differ
    seed: int
    cmd: list             # argv after the python executable ('-m data.mini_libero ...' for demos)
    out: str
    needs: list           # out dirs of the runs this one reads
    done: str = "metrics.json"   # the file whose presence means finished


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


def parse_layout_data(s: str) -> dict:
    """'libero=D1,libero-x3=D3' → {layout: dir}."""
    try:
        return dict(kv.split("=", 1) for kv in s.split(",") if kv.strip())
    except ValueError:
        raise SystemExit(f"ablate.py: --layout-data {s!r}: expected layout=DIR pairs, comma-separated")


def layout_demos(cfg: Config) -> dict:
    """{layout: demos dir}: --layout-data's, else OUT/demos/<layout>."""
    given = parse_layout_data(cfg.layout_data)
    return {l: given.get(l, os.path.join(cfg.out, "demos", l)) for l in comma_list(cfg.layouts)}


def demos_runs(cfg: Config) -> list[Run]:
    """The layouts' demos that are not given: `python -m data.mini_libero demos` (done when stats.json exists)."""
    given = parse_layout_data(cfg.layout_data)
    return [Run(f"demos-{l}", 0, ["-m", "data.mini_libero", "demos", "--layout", l, "--per-task", str(cfg.per_task),
                                 "--workers", "1", "--out", d], d, [], "stats.json")
            for l, d in layout_demos(cfg).items() if l not in given]


def backbone_runs(cfg: Config, variant: str, seed: int) -> list[Run]:
    """The backbone chain of one variant and seed, shared by every layout: [] | [sft] | [sft, grpo or ecot]."""
    chain, extra, _ = VARIANTS[variant]
    if chain == "base":
        return []
    P, data = PRESETS[cfg.preset], cfg.data or next(iter(layout_demos(cfg).values()))
    d = lambda key: os.path.join(cfg.out, "runs", key, f"seed{seed}")
    sft_out = d("sft")
    runs = [Run("sft", seed, ["sft.py", "--model", cfg.base, "--data", data, "--out", sft_out, "--seed", str(seed),
                              *(["--fast", cfg.fast] if cfg.fast else []), *merge_flags(P["sft"]), "--resume"],
                sft_out, [data])]
    if chain in ("grpo", "ecot"):
        key = run_key(chain, P[chain], extra.get(chain, ""))
        if chain == "grpo":
            cmd = ["grpo.py", "--init", sft_out, "--out", d(key), "--data", data]
        else:
            cmd = ["sft.py", "--model", sft_out, "--episodes", "stage2", "--data", data, "--out", d(key)]
        runs.append(Run(key, seed, cmd + ["--seed", str(seed), *merge_flags(P[chain], extra.get(chain, "")), "--resume"],
                        d(key), [sft_out]))
    return runs


def variant_plan(cfg: Config, variant: str, seed: int, layout: str) -> list[Run]:
    """The runs of one variant, seed and layout, in order: backbone chain, vla, eval."""
    _, extra, _ = VARIANTS[variant]
    P, demos = PRESETS[cfg.preset], layout_demos(cfg)[layout]
    runs = backbone_runs(cfg, variant, seed)
    backbone = runs[-1].out if runs else cfg.base
    vla_key = f"vla-{runs[-1].key if runs else 'base'}" + run_key("", P["vla"], extra.get("vla", ""))
    d = lambda key: os.path.join(cfg.out, "runs", layout, key, f"seed{seed}")
    runs.append(Run(vla_key, seed, ["vla_train.py", "--backbone", backbone, "--data", demos, "--out", d(vla_key),
                                    "--seed", str(seed), *merge_flags(P["vla"], extra.get("vla", "")), "--resume"],
                    d(vla_key), [demos] + ([backbone] if backbone != cfg.base else [])))
    ev_key = "eval-" + vla_key
    runs.append(Run(ev_key, seed, ["eval_libero.py", "--policy", d(vla_key), "--layout", layout, "--out", d(ev_key),
                                   *merge_flags(P["eval"]), "--resume"], d(ev_key), [d(vla_key)]))
    return runs


def comma_list(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def selected(cfg: Config) -> list[str]:
    names = {"all": list(VARIANTS), "paper": PAPER}.get(cfg.variants) or comma_list(cfg.variants)
    bad = [v for v in names if v not in VARIANTS]
    if bad or not names:
        raise SystemExit(f"ablate.py: unknown variant(s) {bad}; choose from {', '.join(VARIANTS)}, paper or all")
    return names


def parse_seeds(s: str) -> list[int]:
    try:
        seeds = [int(x) for x in comma_list(s)]
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


def newcombe(k1: int, n1: int, k2: int, n2: int) -> list:
    """[p1 − p2, low, high]: Newcombe's hybrid score interval (95 %) for a difference of two proportions, from the
    Wilson intervals of each; sane near 0 and 1, where p ± 1.96 se is not."""
    p1, p2 = k1 / n1, k2 / n2
    (l1, u1), (l2, u2) = wilson_interval(k1, n1), wilson_interval(k2, n2)
    d = p1 - p2
    return [d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)]


def train_figures(run_dir: str, k: int = 5) -> dict:
    """A GRPO run's rollouts (its own target): r_a over the first k rounds and the last k, and the share of groups
    with zero reward spread over all rounds, from its metrics.jsonl."""
    rows = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    if not rows:
        return {}
    mean = lambda xs: sum(xs) / len(xs)
    return {"train_r_a_first": mean([r["r_a"] for r in rows[:k]]), "train_r_a_last": mean([r["r_a"] for r in rows[-k:]]),
            "train_zero_spread": mean([r["zero_spread"] for r in rows])}


def figures(cfg: Config, runs: list[Run], seed: int) -> dict:
    """The figures of one variant, seed and layout from its runs' files (None where absent)."""
    ev = read_json(os.path.join(runs[-1].out, "results.json")) or {}
    vla = read_json(os.path.join(runs[-2].out, "metrics.json")) or {}
    suites = ev.get("suites", {})
    out = {"success": ev.get("average"), "k": sum(v["successes"] for v in suites.values()) if suites else None,
           "n": sum(v["n"] for v in suites.values()) if suites else None}
    out.update({f"success/{s}": v["success"] for s, v in suites.items()})
    out.update({f"n/{s}": v["n"] for s, v in suites.items()})
    out["val_l1"] = vla.get("val_l1")
    if len(runs) > 2:                                  # a trained backbone: its own held-out figures after training
        bb, when = read_json(os.path.join(runs[-3].out, "metrics.json")) or {}, "after"
    else:                                              # the base row: the SFT run's figures before it trained
        bb, when = read_json(os.path.join(backbone_runs(cfg, "sft", seed)[0].out, "metrics.json")) or {}, "before"
    out["backbone_prefix"] = (bb.get(when) or {}).get("reason/prefix", [None])[0]
    out["backbone_direction"] = (bb.get(when) or {}).get("reason/direction", [None])[0]
    if len(runs) > 2:                                  # paired over the same held-out prompts, inside its own run
        out["backbone_prefix_change"] = (bb.get("change") or {}).get("reason/prefix", [None])[0]
    if len(runs) > 2 and runs[-3].cmd[0] == "grpo.py":
        out.update(train_figures(runs[-3].out))
    return out


def references(cfg: Config, layout: str) -> dict:
    """{replay|blind|oracle: {success, k, n, suites}} from bench/calibration.py's output for this layout."""
    out = {}
    for p in REFERENCES:
        r = read_json(os.path.join(cfg.references, layout, f"eval-{p}", "results.json"))
        if r:
            k, n = sum(v["successes"] for v in r["suites"].values()), sum(v["n"] for v in r["suites"].values())
            out[p] = {"success": r["average"], "k": k, "n": n, "suites": {s: v["success"] for s, v in r["suites"].items()}}
    return out


POOL_BELOW = 3     # fewer seeds than this: success intervals pool the seeds' episodes (a t with 1 d.o.f. says nothing)


def summarise(per_seed: dict) -> dict:
    """{variant: {metric: [mean, low, high, n]}} over the seeds whose evaluation finished. With fewer than
    POOL_BELOW seeds, success (average and per suite) gets the Wilson interval over the seeds' pooled episodes
    instead, and the entry 'pooled' is True (the table marks it): that interval holds the trials' noise only."""
    out = {}
    for v, seeds in per_seed.items():
        done = [f for s, f in sorted(seeds.items()) if f.get("success") is not None]
        keys = [m for m in dict.fromkeys(m for f in done for m in f) if m not in ("k", "n") and m[:2] != "n/"]
        out[v] = {m: mean_ci_t([f.get(m) for f in done]) for m in keys}
        out[v]["seeds"] = sorted(s for s, f in seeds.items() if f.get("success") is not None)
        out[v]["pooled"] = 0 < len(done) < POOL_BELOW
        if out[v]["pooled"]:
            for m in [m for m in keys if m == "success" or m.startswith("success/")]:
                ns = [f["n"] if m == "success" else f.get("n/" + m[8:], 0) for f in done]
                k = sum(round(f[m] * n) for f, n in zip(done, ns))
                if sum(ns):
                    out[v][m] = [out[v][m][0], *wilson_interval(k, sum(ns)), len(done)]
    return out


def compare(per_seed: dict, a: str, b: str):
    """a − b in success: [diff, low, high, seeds]; None when no seed has both. Paired by seed (t interval over the
    seeds' differences); with fewer than POOL_BELOW seeds, Newcombe's interval over the pooled episodes."""
    A, B = per_seed.get(a, {}), per_seed.get(b, {})
    seeds = [s for s in A if A[s].get("success") is not None and (B.get(s) or {}).get("success") is not None]
    if not seeds:
        return None
    if len(seeds) < POOL_BELOW:
        tot = lambda X, key: sum(X[s][key] for s in seeds)
        return [*newcombe(tot(A, "k"), tot(A, "n"), tot(B, "k"), tot(B, "n")), len(seeds)]
    return mean_ci_t([A[s]["success"] - B[s]["success"] for s in seeds])


# ----------------------------------------------------------------------------- output
def pct(v, pooled=False) -> str:
    """A success rate with its interval, clipped to [0, 1]; ʷ marks a Wilson interval over pooled episodes."""
    if v is None or v[3] == 0:
        return "–"
    if v[1] == v[2]:
        return f"{v[0]:.1%}"
    return f"{v[0]:.1%} [{max(v[1], 0):.0%}, {min(v[2], 1):.0%}]" + ("ʷ" if pooled else "")


def num(v) -> str:
    if v is None or v[3] == 0:
        return "–"
    return f"{v[0]:.3f}" if v[3] < 2 else f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"


def layout_markdown(layout: str, summary: dict, refs: dict, per_seed: dict) -> list[str]:
    def ref(p: str) -> str:
        if p not in refs:
            return "–"
        lo, hi = wilson_interval(refs[p]["k"], refs[p]["n"])
        return f"{refs[p]['success']:.1%} [{lo:.0%}, {hi:.0%}]"

    order = ["spatial", "object", "goal", "long"]
    suites = sorted({m.split("/")[1] for s in summary.values() for m in s if m.startswith("success/")},
                    key=lambda s: order.index(s) if s in order else len(order))
    L = [f"\n## Layout `{layout}`\n",
         f"Floor and ceiling at this layout (bench/calibration.py, {refs.get('oracle', refs.get('replay', {})).get('n', '?')} "
         f"episodes each, Wilson 95 %): replay **{ref('replay')}**, blind **{ref('blind')}**, oracle **{ref('oracle')}**.\n",
         "| variant | success | " + "".join(f"{x} | " for x in suites) + "blind / oracle | backbone r_a | backbone direction "
         "| GRPO train r_a (first → last 5 rounds) | VLA val L1 | seeds |",
         "|---" * (len(suites) + 8) + "|"]
    bo = " / ".join(f"{refs[p]['success']:.1%}" if p in refs else "–" for p in ("blind", "oracle"))
    for v, s in summary.items():
        tr = s.get("train_r_a_first"), s.get("train_r_a_last")
        trs = f"{tr[0][0]:.3f} → {tr[1][0]:.3f}" if tr[0] and tr[1] and tr[0][3] and tr[1][3] else "–"
        per_suite = "".join(pct(s.get(f"success/{x}"), s["pooled"]) + " | " for x in suites)
        L.append(f"| {v} | {pct(s.get('success'), s['pooled'])} | {per_suite}{bo} | {num(s.get('backbone_prefix'))} | "
                 f"{num(s.get('backbone_direction'))} | {trs} | {num(s.get('val_l1'))} | "
                 f"{','.join(map(str, s['seeds'])) or 'none'} |")
    L += [f"\nComparisons in closed-loop success: paired by seed (t interval over the seeds' differences), or with "
          f"fewer than {POOL_BELOW} seeds Newcombe's interval over the pooled episodes. The half-width is the smallest "
          "difference these runs could tell from zero.\n",
          "| comparison | paper | difference [95 %] | half-width | seeds |", "|---|---|---|---|---|"]
    for (a, b), paper in COMPARISONS.items():
        c = compare(per_seed, a, b) if a in per_seed and b in per_seed else None
        if c:
            L.append(f"| {a} − {b} | {paper} | {c[0]:+.1%} [{c[1]:+.1%}, {c[2]:+.1%}] | {(c[2] - c[1]) / 2:.1%} | {c[3]} |")
    return L


def results_markdown(cfg: Config, by_layout: dict, plans: dict) -> str:
    L = [f"# Ablations on mini-LIBERO (preset `{cfg.preset}`)\n",
         f"Mean over seeds [Student-t 95 % interval] (ʷ: fewer than {POOL_BELOW} seeds, Wilson interval over their pooled "
         "episodes); – = not measured. "
         "Success is the closed-loop rate over the four suites (eval_libero.py); r_a and direction are the backbone's "
         "held-out reasoning → FAST figures; VLA val L1 in normalised action units on held-out frames."]
    for layout, (summary, refs, per_seed) in by_layout.items():
        L += layout_markdown(layout, summary, refs, per_seed)
    L += ["\n## Settings\n", f"Preset `{cfg.preset}`, base backbone `{cfg.base}`, layouts `{cfg.layouts}`.\n",
          "| stage | preset flags |", "|---|---|"]
    L += [f"| {st} | `{fl or '(defaults)'}` |" for st, fl in PRESETS[cfg.preset].items()]
    L += ["\n| variant | paper | runs (key: changed flags) |", "|---|---|---|"]
    for v, runs in plans.items():
        L.append(f"| {v} | {VARIANTS[v][2]} | " + " → ".join(f"`{r.key}`" for r in runs) + " |")
    return "\n".join(L) + "\n"


def plot(by_layout: dict, path: str) -> bool:
    """Closed-loop success per variant with its interval, one panel per layout, replay / blind / oracle as lines."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("ablate.py: no results.png: matplotlib is missing (pip install -r requirements-plot.txt)")
        return False
    n = max(len(s) for s, _, _ in by_layout.values())
    fig, axes = plt.subplots(1, len(by_layout), figsize=(max(5, 0.8 * n + 2) * len(by_layout), 3.8), squeeze=False)
    for ax, (layout, (summary, refs, _)) in zip(axes[0], by_layout.items()):
        names = list(summary)
        vals = [summary[v].get("success", [float("nan")] * 3 + [0]) for v in names]
        err = [[max(v[0] - v[1], 0) for v in vals], [max(v[2] - v[0], 0) for v in vals]]
        ax.bar(range(len(names)), [v[0] for v in vals], yerr=err, capsize=3, color="#4C72B0")
        for p, c in zip(REFERENCES, ("0.5", "#E69A28", "#2CA05A")):
            if p in refs:
                ax.axhline(refs[p]["success"], color=c, ls="--", lw=1.2, label=p)
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(f"closed-loop success at {layout}", fontsize=9)
        if refs:
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=120)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)
    return True


# ----------------------------------------------------------------------------- main
def execute(run: Run, log_dir: str) -> float:
    """Run one stage as a subprocess (its output to logs/); returns seconds. Raises SystemExit on failure."""
    os.makedirs(log_dir, exist_ok=True)
    log = os.path.join(log_dir, run.out.replace(os.sep, "_").strip("_")[-120:] + ".log")
    argv = run.cmd if run.cmd[0] == "-m" else [os.path.join(ROOT, run.cmd[0]), *run.cmd[1:]]
    t0 = time.time()
    with open(log, "w") as f:
        f.write("$ python " + " ".join(run.cmd) + "\n")
        f.flush()
        p = subprocess.run([sys.executable, *argv], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        with open(log) as f:
            tail = f.read()[-1500:]
        raise SystemExit(f"ablate.py: {run.cmd[0]} failed (exit {p.returncode}) for {run.out}; log {log}:\n{tail}")
    return time.time() - t0


def main(cfg: Config) -> dict:
    if cfg.preset not in PRESETS:
        raise SystemExit(f"ablate.py: --preset {cfg.preset!r}: choose {' | '.join(PRESETS)}")
    names, seeds, layouts = selected(cfg), parse_seeds(cfg.seeds), comma_list(cfg.layouts)
    if not layouts:
        raise SystemExit("ablate.py: --layouts is empty")
    if len(seeds) < 3 and cfg.preset != "smoke" and not cfg.collect_only:
        print(f"ablate.py: note: {len(seeds)} seed(s); the intervals over seeds need ≥ 3")
    plans = {(v, s, l): variant_plan(cfg, v, s, l) for s in seeds for l in layouts for v in names}
    order, seen = [], set()                                     # every distinct run once, dependencies first
    for r in demos_runs(cfg) + [r for p in plans.values() for r in p]:
        if r.out not in seen:
            seen.add(r.out)
            order.append(r)
    print(f"ablate.py | preset {cfg.preset} | {len(names)} variants × {len(seeds)} seeds × {len(layouts)} layouts | "
          f"{len(order)} distinct runs")
    finished = lambda r: os.path.isfile(os.path.join(r.out, r.done))
    if cfg.dry_run:
        for r in order:
            print(("[done] " if finished(r) else "") + "python " + " ".join(r.cmd))
        return {}
    failed, t_start = set(), time.time()
    for i, r in enumerate(order if not cfg.collect_only else []):
        tag = f"[{i + 1}/{len(order)}] {os.path.relpath(r.out, cfg.out)}"
        if finished(r):
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

    by_layout = {}
    for l in layouts:
        per_seed = {v: {s: figures(cfg, plans[(v, s, l)], s) for s in seeds} for v in names}
        by_layout[l] = (summarise(per_seed), references(cfg, l), per_seed)
    os.makedirs(cfg.out, exist_ok=True)
    res = {"config": asdict(cfg), "preset": PRESETS[cfg.preset],
           "variants": {v: {"chain": VARIANTS[v][0], "extra": VARIANTS[v][1], "paper": VARIANTS[v][2]} for v in names},
           "per_seed": {l: b[2] for l, b in by_layout.items()}, "summary": {l: b[0] for l, b in by_layout.items()},
           "references": {l: b[1] for l, b in by_layout.items()},
           "comparisons": {l: {f"{a} - {b}": compare(by_layout[l][2], a, b) for a, b in COMPARISONS
                               if a in names and b in names} for l in layouts},
           "seconds": round(time.time() - t_start, 1)}
    write_json(os.path.join(cfg.out, "results.json"), res)
    md = results_markdown(cfg, by_layout, {v: plans[(v, seeds[0], layouts[0])] for v in names})
    write_text(os.path.join(cfg.out, "results.md"), md)
    if cfg.plot:
        plot(by_layout, os.path.join(cfg.out, "results.png"))
    print(md)
    print(f"wrote {cfg.out}/results.md, results.json ({time.time() - t_start:.0f}s)")
    return res


if __name__ == "__main__":
    main(parse_config())
