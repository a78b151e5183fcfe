"""Reward curves of one or more grpo.py runs (their metrics.jsonl) as one PNG: mean reward, r_f and r_a per round
(thin) and their trailing mean over --smooth rounds (thick).

    python scripts/plot_grpo.py out/grpo                                  # -> out/grpo/reward.png
    python scripts/plot_grpo.py out/grpo_s0 out/grpo_s1 --png assets/grpo_reward.png

Needs matplotlib (pip install -r requirements-plot.txt).
"""
import argparse
import json
import os
import sys


def read_rounds(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise SystemExit(f"plot_grpo.py: {path} not found (expected a grpo.py --out directory)")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def trailing_mean(y: list, k: int) -> list:
    """Each value replaced by the mean of it and the k − 1 before it (fewer at the start)."""
    k = max(1, k)
    return [sum(y[max(0, i - k + 1):i + 1]) / (i + 1 - max(0, i - k + 1)) for i in range(len(y))]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="grpo.py output directories")
    p.add_argument("--png", default="", help="output file ('' = RUN/reward.png of the first run)")
    p.add_argument("--smooth", type=int, default=5, help="trailing mean over this many rounds, drawn over the raw curve")
    a = p.parse_args(argv)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot_grpo.py: matplotlib is missing (pip install -r requirements-plot.txt)")
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2), sharex=True)
    for run in a.runs:
        rows = read_rounds(run)
        x = [r["round"] for r in rows]
        for ax, key in zip(axes, ("reward", "r_f", "r_a")):
            y = [r[key] for r in rows]
            line, = ax.plot(x, y, lw=0.8, alpha=0.35)           # per round: a few prompts, so noisy
            ax.plot(x, trailing_mean(y, a.smooth), color=line.get_color(), lw=1.8,   # the trend
                    label=os.path.basename(run.rstrip("/")))
    for ax, title in zip(axes, ("reward = (r_f + r_a) / 2", "format reward r_f", "prefix accuracy r_a")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("rollout round")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    out = a.png or os.path.join(a.runs[0], "reward.png")
    tmp = out + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
