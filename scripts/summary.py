"""The pipeline's last word: one table of closed-loop success per backbone and suite (95 % Wilson intervals),
then each stage's key figure, all read from the metrics.json / results.json the stages wrote.

    python scripts/summary.py --root out          # what scripts/pipeline.sh prints at the end
    python scripts/summary.py --root out --evals "SFT=eval_sft,SFT+GRPO=eval" --out out/summary.md

Anything missing (a stage not run yet) shows as "–" instead of failing, so it also summarises a partial run.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from config import arg, parse_config as parse_flags, read_json, write_text  # noqa: E402
from eval_libero import wilson_interval  # noqa: E402  (the same interval eval_libero.py reports)


@dataclass
class Config:
    root: str = arg("out", "the pipeline's output directory (scripts/pipeline.sh's OUT)")
    evals: str = arg("VLA (SFT)=eval_sft,VLA (SFT+GRPO)=eval,replay (floor)=eval_replay,expert=eval_expert",
                     "name=dir pairs under --root: eval_libero.py outputs, one table row each")
    vlas: str = arg("SFT=vla_sft,SFT+GRPO=vla", "name=dir pairs under --root: vla_train.py outputs")
    out: str = arg("", "also write the summary to this Markdown file")


def parse_config(argv=None) -> Config:
    return parse_flags(Config, argv, __doc__)


def pairs(s: str) -> list[tuple[str, str]]:
    out = [tuple(x.split("=", 1)) for x in s.split(",") if x.strip()]
    if any(len(p) != 2 for p in out):
        raise SystemExit(f"summary.py: {s!r}: expected name=dir pairs")
    return out


def pct(k: int, n: int) -> str:
    lo, hi = wilson_interval(k, n)
    return f"{k / n:.1%} [{lo:.1%}, {hi:.1%}] (n={n})"


def success_table(results: dict) -> str:
    """{row name: eval_libero results.json or None} → Markdown: success per suite and pooled over suites. The
    replay row is the floor (a same-task demo replayed open-loop: a policy that never looks), the expert row the
    privileged ceiling of the world itself."""
    suites = []
    for r in results.values():
        for s in (r or {}).get("suites", {}):
            if s not in suites:
                suites.append(s)
    lines = ["| policy | " + " | ".join(suites) + " | all suites (pooled) |", "|---" * (len(suites) + 2) + "|"]
    for name, r in results.items():
        if not r:
            lines.append(f"| {name} | " + " | ".join("–" for _ in suites) + " | – |")
            continue
        cells, k_all, n_all = [], 0, 0
        for s in suites:
            v = r["suites"].get(s)
            cells.append(pct(v["successes"], v["n"]) if v else "–")
            if v:
                k_all, n_all = k_all + v["successes"], n_all + v["n"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {pct(k_all, n_all) if n_all else '–'} |")
    return "\n".join(lines)


def ci(v) -> str:
    return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]" if v else "–"


def stage_lines(root: str, vlas: list[tuple[str, str]]) -> list[str]:
    """One line per stage with its key figure."""
    j = lambda *p: read_json(os.path.join(root, *p)) or {}
    L = []
    st = j("demos", "stats.json")
    L.append(f"demos: {st.get('n_episodes', '–')} episodes, {st.get('n_steps', '–')} steps")
    v = j("fast", "metrics.json").get("val", {})
    L.append(f"fast:  {v.get('tokens_mean', float('nan')):.1f} tokens per chunk (naive {v.get('naive_tokens', '–')}), "
             f"reconstruction RMS {v.get('err_rms_norm', float('nan')):.3f} (normalised)" if v else "fast:  –")
    m = j("sft", "metrics.json")        # changes are paired over the same held-out prompts
    a, c, e = m.get("after") or {}, m.get("change") or {}, m.get("image_effect") or {}
    change = lambda k: f", change from the backbone {ci(c[k])}" if k in c else ""    # none when built from scratch
    L.append(f"sft:   format {ci(a.get('reason/format'))}; reasoning → FAST exact {ci(a.get('reason/exact'))}"
             f"{change('reason/exact')}, true − shuffled images {ci(e.get('reason/exact'))}; "
             f"prefix r_a {ci(a.get('reason/prefix'))}{change('reason/prefix')}" if a else "sft:   –")
    m = j("grpo", "metrics.json")
    a, c, e = m.get("after") or {}, m.get("change") or {}, m.get("image_effect") or {}
    L.append(f"grpo:  prefix r_a {ci(a.get('reason/prefix'))}, change from SFT {ci(c.get('reason/prefix'))}, "
             f"true − shuffled images {ci(e.get('reason/prefix'))}; direction change {ci(c.get('reason/direction'))}"
             if a else "grpo:  –")
    for name, d in vlas:
        m = j(d, "metrics.json")
        L.append(f"vla ({name}): held-out action L1 {m['val_l1']:.3f} vs mean-action baseline {m['mean_action_l1']:.3f}"
                 if m else f"vla ({name}): –")
    return L


def summary(cfg: Config) -> str:
    results = {name: read_json(os.path.join(cfg.root, d, "results.json")) for name, d in pairs(cfg.evals)}
    text = ["## Closed-loop success (eval_libero.py; 95 % Wilson intervals)", "", success_table(results), "",
            "## Stage figures", ""] + [f"- {x}" for x in stage_lines(cfg.root, pairs(cfg.vlas))]
    return "\n".join(text) + "\n"


if __name__ == "__main__":
    cfg = parse_config()
    s = summary(cfg)
    print(s)
    if cfg.out:
        write_text(cfg.out, s)
