"""The calibration curve: closed-loop success against layout for the whole reference ladder, so that every VLA
figure can be read against a floor and a ceiling measured the same way.

For each layout (data/scenes.py: libero, libero-x2, libero-x3, wide) it makes the layout's demos, then evaluates
with eval_libero.py's one protocol (the 50 fixed init states of the layout, --trials per task, all four suites):

  replay     open-loop replay of a same-task training demo           the floor of a policy that never looks
  blind      the DDPM head on the SFT backbone fed a blank image      knows the task and its proprio, sees nothing
  oracle     the same head on privileged state                        what perfect perception allows
  vla-tiny   the VLA on the pretrained backbone (assets/tiny-vl)
  vla-sft    the VLA on the SFT backbone (--sft)

Every step is a subprocess with the flags a user would type; a step whose metrics.json exists is skipped, so an
interrupted run resumes. Writes OUT/<layout>/<step>/..., OUT/calibration.json, OUT/calibration.md and the chart
(--png, default assets/calibration.png; pillow only).

    python bench/calibration.py --sft out/sft --out out/calibration                     # ~1 h on 2 cores
    python bench/calibration.py --sft out/sft --layouts libero --policies replay,oracle --trials 10
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from eval_libero import wilson_interval  # noqa: E402
from config import arg, parse_config  # noqa: E402

POLICIES = ("replay", "blind", "oracle", "vla-tiny", "vla-sft")
COLOURS = {"replay": (150, 150, 150), "blind": (230, 150, 40), "oracle": (40, 160, 70), "vla-tiny": (90, 120, 220),
           "vla-sft": (200, 40, 60)}


@dataclass
class Config:
    out: str = arg("out/calibration", "output directory")
    sft: str = arg("out/sft", "the SFT backbone (blind and vla-sft read it)")
    base: str = arg("assets/tiny-vl", "the pretrained backbone (vla-tiny reads it)")
    layouts: str = arg("libero,libero-x2,libero-x3,wide", "comma list of layouts")
    policies: str = arg(",".join(POLICIES), "comma list of the ladder's rungs")
    per_task: int = arg(20, "demos per task for each layout")
    trials: int = arg(10, "closed-loop trials per task (init states 0..trials-1)")
    vla_flags: str = arg("", "extra vla_train.py flags for every head, e.g. '--steps 1500'")
    jobs: int = arg(2, "layouts processed side by side (one thread each)")
    collect_only: bool = arg(False, "run nothing: summarise the finished evaluations under --out")
    png: str = arg("assets/calibration.png", "the chart")


def step(cmd: list, out: str, log: str) -> None:
    """Run one stage unless its metrics.json exists; its output goes to `log`."""
    if os.path.isfile(os.path.join(out, "metrics.json")):
        return
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    t0 = time.time()
    with open(log, "w") as f:
        p = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if p.returncode:
        raise SystemExit(f"calibration.py: {' '.join(cmd)} failed ({p.returncode}); see {log}")
    print(f"  {out}: {time.time() - t0:.0f}s", flush=True)


def run_layout(cfg: Config, layout: str) -> None:
    d = os.path.join(cfg.out, layout)
    os.makedirs(d, exist_ok=True)
    demos = os.path.join(d, "demos")
    if not os.path.isfile(os.path.join(demos, "stats.json")):
        step(["-m", "data.mini_libero", "demos", "--layout", layout, "--per-task", str(cfg.per_task), "--workers", "1",
              "--out", demos], demos, os.path.join(d, "demos.log"))
    ev = ["eval_libero.py", "--trials-per-task", str(cfg.trials), "--num-envs", "20", "--layout", layout]
    heads = {"blind": ["--backbone", cfg.sft, "--features", "blind"], "oracle": ["--features", "oracle"],
             "vla-tiny": ["--backbone", cfg.base], "vla-sft": ["--backbone", cfg.sft]}
    for p in cfg.policies.split(","):
        if p == "replay":
            policy = "replay"
        else:
            policy = os.path.join(d, f"head-{p}")
            step(["vla_train.py", *heads[p], "--data", demos, "--out", policy, "--val-every", "0", "--save-every", "0",
                  *cfg.vla_flags.split()], policy, os.path.join(d, f"head-{p}.log"))
        step([*ev, "--policy", policy, "--data", demos, "--out", os.path.join(d, f"eval-{p}")],
             os.path.join(d, f"eval-{p}"), os.path.join(d, f"eval-{p}.log"))


def collect(cfg: Config) -> dict:
    """{layout: {policy: {average, ci95 (Wilson over all episodes), n, suites}}} from the finished evaluations."""
    out = {}
    for layout in cfg.layouts.split(","):
        for p in cfg.policies.split(","):
            path = os.path.join(cfg.out, layout, f"eval-{p}", "results.json")
            if not os.path.isfile(path):
                continue
            r = json.load(open(path))
            k = sum(v["successes"] for v in r["suites"].values())
            n = sum(v["n"] for v in r["suites"].values())
            out.setdefault(layout, {})[p] = {"average": r["average"], "ci95": wilson_interval(k, n), "n": n,
                                             "suites": {s: v["success"] for s, v in r["suites"].items()}}
    return out


def table(res: dict, policies: list) -> str:
    rows = ["| layout | " + " | ".join(policies) + " |", "|---|" + "---|" * len(policies)]
    for layout, r in res.items():
        cell = lambda p: f"{r[p]['average']:.1%} [{r[p]['ci95'][0]:.0%}, {r[p]['ci95'][1]:.0%}]" if p in r else "–"
        rows.append(f"| {layout} | " + " | ".join(cell(p) for p in policies) + " |")
    return "\n".join(rows)


def chart(res: dict, policies: list, path: str, w=640, h=360, pad=48) -> None:
    """Success (average over suites) against layout, one line per rung, 95 % intervals as bars."""
    from PIL import Image, ImageDraw
    layouts = list(res)
    img = Image.new("RGB", (w, h), "white")
    dr = ImageDraw.Draw(img)
    X = lambda i: pad + (w - 2 * pad - 90) * (i / max(1, len(layouts) - 1))
    Y = lambda v: h - pad - (h - 2 * pad) * v
    for v in (0, 0.25, 0.5, 0.75, 1.0):
        dr.line([(pad, Y(v)), (w - pad - 90, Y(v))], fill=(225, 225, 225))
        dr.text((6, Y(v) - 6), f"{v:.0%}", fill="black")
    for i, layout in enumerate(layouts):
        dr.text((X(i) - 20, h - pad + 8), layout, fill="black")
    for j, p in enumerate(policies):
        pts = [(X(i), Y(res[l][p]["average"]), res[l][p]["ci95"]) for i, l in enumerate(layouts) if p in res[l]]
        c = COLOURS.get(p, (0, 0, 0))
        for x, y, (lo, hi) in pts:
            dr.line([(x + 2 * j - 4, Y(lo)), (x + 2 * j - 4, Y(hi))], fill=c, width=1)
            dr.ellipse([x - 3, y - 3, x + 3, y + 3], fill=c)
        if len(pts) > 1:
            dr.line([(x, y) for x, y, _ in pts], fill=c, width=2)
        dr.text((w - pad - 70, pad + 16 * j), p, fill=c)
    dr.text((pad, 10), "closed-loop success (4 suites) vs layout; bars: 95 % Wilson", fill="black")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    img.save(path)


def main(cfg: Config) -> dict:
    layouts, policies = cfg.layouts.split(","), cfg.policies.split(",")
    bad = [p for p in policies if p not in POLICIES]
    if bad:
        raise SystemExit(f"calibration.py: unknown --policies {bad}: expected some of {', '.join(POLICIES)}")
    t0 = time.time()
    if not cfg.collect_only:
        with ThreadPoolExecutor(cfg.jobs) as pool:
            list(pool.map(lambda l: run_layout(cfg, l), layouts))
    res = collect(cfg)
    md = table(res, policies)
    with open(os.path.join(cfg.out, "calibration.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(cfg.out, "calibration.md"), "w") as f:
        f.write(md + f"\n\n{cfg.trials} trials per task, {cfg.per_task} demos per task; `python bench/calibration.py "
                f"--layouts {cfg.layouts} --policies {cfg.policies} --trials {cfg.trials} --per-task {cfg.per_task}"
                f"{f' --vla-flags {chr(39)}{cfg.vla_flags}{chr(39)}' if cfg.vla_flags else ''}` ({time.time() - t0:.0f}s "
                f"this run)\n")
    chart(res, policies, cfg.png)
    print(md + f"\nwrote {cfg.out}/calibration.md, {cfg.png}")
    return res


if __name__ == "__main__":
    main(parse_config(Config, doc=__doc__))
