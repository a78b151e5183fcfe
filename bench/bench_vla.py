"""Policy inference latency of a VLA checkpoint (backbone forward + K DDIM steps), for 1 and 8 observations, and
what it means for closed-loop evaluation speed with chunked execution.

    python bench/bench_vla.py --policy out/vla        # writes bench/results/vla.md
"""
import argparse
import os
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data.demos import open_dataset  # noqa: E402
from vla_train import Policy  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", default="out/vla", help="VLA checkpoint dir (vla_train.py --out)")
    p.add_argument("--data", default="out/demos", help="dataset to draw real observations from (any format open_dataset reads)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per batch size (median reported)")
    p.add_argument("--replan-steps", type=int, default=5, help="actions executed per policy call (eval_libero default)")
    args = p.parse_args()
    pol = Policy.load(args.policy)
    ds = open_dataset(args.data)
    ep = ds.load(ds.indices("val")[0], ["agentview_rgb", "eye_in_hand_rgb", "state"])
    lang = ds.episodes[ds.indices("val")[0]]["language"]
    rows = []
    for B in (1, 8):
        img, wrist = ep["agentview_rgb"][:B], ep["eye_in_hand_rgb"][:B]
        state, texts = ep["state"][:B], [lang] * B
        pol(img, wrist, state, texts)                                   # warm-up
        ts = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            pol(img, wrist, state, texts, generator=torch.Generator().manual_seed(0))
            ts.append(time.perf_counter() - t0)
        ms = 1000 * float(np.median(ts))
        # each call yields `replan` actions per observation; env stepping itself costs ~1 ms per step here
        sps = B * args.replan_steps / (ms / 1000 + B * args.replan_steps * 0.0013)
        rows.append(f"| {B} | {ms:.0f} ms | {ms / B:.1f} ms | {sps:,.0f} |")
        print(rows[-1], flush=True)
    text = "\n".join([f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                      f"{torch.get_num_threads()} threads; policy {args.policy} (DDIM {pol.vcfg['ddim_steps']} steps, "
                      f"chunk {pol.horizon}, replan {args.replan_steps}).", "",
                      "| observations per call | latency (median) | per observation | expected env steps/s in closed loop |",
                      "|---|---|---|---|", *rows, ""])
    os.makedirs("bench/results", exist_ok=True)
    with open("bench/results/vla.md", "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
