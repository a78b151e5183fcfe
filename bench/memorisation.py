"""Does a backbone read new scenes as well as the scenes it was trained on? Train vs held-out episodes.

The same prompt kinds and the same greedy evaluation as sft.py (`sft.evaluate`), once on episodes the backbone
trained on (sft.py's split: train minus the GRPO reserve, same seed) and once on the held-out episodes. A large gap
on captions says the model memorised its training layouts (more scenes would help); no gap on the FAST figures
with both low says the mapping from what it sees to the action tokens is what fails, not generalisation.

    python bench/memorisation.py                                   # assets/tiny-vl on out/demos, ~1 min
    python bench/memorisation.py --model out/sft --kinds reason --prompts 96
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import samples as sm  # noqa: E402
import sft  # noqa: E402
from model import load_backbone  # noqa: E402
from data.demos import open_dataset  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="assets/tiny-vl", help="backbone or SFT checkpoint with the action vocabulary")
    p.add_argument("--data", default="out/demos", help="the demos it was trained on")
    p.add_argument("--kinds", default="caption,fast", help="prompt kinds to evaluate (sft.py's kinds)")
    p.add_argument("--prompts", type=int, default=64, help="prompts per kind and split")
    p.add_argument("--stage2-frac", type=float, default=0.1, help="the GRPO reserve of the run that made --model")
    p.add_argument("--seed", type=int, default=0, help="the seed of the run that made --model")
    a = p.parse_args(argv)
    ds = open_dataset(a.data)
    model, proc, fast, vocab = load_backbone(a.model)
    proc.tokenizer.padding_side = "left"
    train_eps, _, val_eps = sft.split_episodes(ds, a.stage2_frac, a.seed)
    rows = {}
    for split, eps in (("trained on", train_eps), ("held out", val_eps)):
        prompts = []
        for k in a.kinds.split(","):
            s = sm.build_samples(ds, eps, fast, {k: 1.0}, a.seed + 1)
            prompts += [s[i] for i in np.random.default_rng(0).permutation(len(s))[: a.prompts]]
        m = sft.evaluate(model, proc, vocab, fast, prompts, sm.Frames(ds, eps))
        for k, v in m.items():
            rows.setdefault(k, {})[split] = v
    print(f"{a.model} on {a.data}: mean [95 % interval] over {a.prompts} prompts per kind")
    print("| figure | episodes it trained on | held-out episodes |\n|---|---|---|")
    for k, v in rows.items():
        print(f"| {k} | " + " | ".join(f"{v[s][0]:.3f} [{v[s][1]:.3f}, {v[s][2]:.3f}]" for s in ("trained on", "held out")) + " |")


if __name__ == "__main__":
    main()
