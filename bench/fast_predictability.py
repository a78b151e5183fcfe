"""How predictable are the next chunk's FAST tokens from the privileged world state? A ceiling for any backbone.

A 1-nearest-neighbour "oracle" per task: memory = every other frame of the train episodes, key = the standardised
flat world state (every body's pose, the hand, the gripper) plus the index of the expert's current phase; query =
the val episodes. It reports how often the neighbour's FAST ids match the query's on the first 1/2/3 tokens, its
prefix ratio r_a, and the per-task majority first token. If even this sees 5 % of first tokens, no model reading
pixels will do better: the variation that decides the tokens is not in the state (operator speed, pauses, tremor).
Then the ceiling of the reasoning's words: how often the majority first token given what sft.py's <think> text says
about the motion (per-axis signs and the gripper words, data/prompts.py) is the right one — what a model that wrote
perfect reasoning and then followed only it would get.

    python bench/fast_predictability.py                                  # out/demos with its own fitted FAST
    python bench/fast_predictability.py --data out/demos --scale 10      # the paper's scale
"""
import argparse
import collections
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import prompts  # noqa: E402
from data.demos import DemoDataset, chunk_episode  # noqa: E402
from fast_tokenizer import FastTokenizer  # noqa: E402


def prefix_len(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="out/demos", help="mini-LIBERO demos (they carry the privileged state)")
    p.add_argument("--scale", type=float, default=2.0, help="FAST scale (fitted here on the train split)")
    p.add_argument("--vocab-size", type=int, default=1024, help="FAST vocabulary size")
    p.add_argument("--horizon", type=int, default=10, help="chunk length T")
    a = p.parse_args(argv)
    ds = DemoDataset(a.data)
    fast = FastTokenizer.fit(ds.action_chunks(a.horizon, "train"), a.vocab_size, a.scale)
    by_task = collections.defaultdict(lambda: {"train": [], "val": []})
    by_words, words_val = collections.defaultdict(collections.Counter), []
    for i, e in enumerate(ds.episodes):
        z = ds.load(i, ["sim_state", "actions", "phase", "state"])
        chunks = chunk_episode(z["actions"], a.horizon)
        all_ids = fast.encode(chunks)
        for c, first, q in zip(chunks, all_ids, z["state"]):              # q[6:8] = (width/2, -width/2)
            words = (tuple(prompts.motion_signs(c)), prompts.gripper_words(c, q[6] - q[7]))
            if e["split"] == "val":
                words_val.append((words, first[0]))
            else:
                by_words[words].update([first[0]])
        ids = all_ids[::2]
        order = list(dict.fromkeys(z["phase"]))                      # phases in the order the expert met them
        phase = np.array([order.index(s) for s in z["phase"]])[::2, None] * 10.0
        by_task[(e["suite"], e["task_id"])][e["split"]].append((np.concatenate([z["sim_state"][::2], phase], 1), ids))
    hits, n, majority, prefix = np.zeros(3), 0, 0, 0.0
    for d in by_task.values():
        if not d["val"]:
            continue
        keys = np.concatenate([x for x, _ in d["train"]])
        mem = [y for _, ys in d["train"] for y in ys]
        mu, sd = keys.mean(0), keys.std(0) + 1e-6
        keys = (keys - mu) / sd
        top = collections.Counter(y[0] for y in mem).most_common(1)[0][0]
        for x, ys in d["val"]:
            for q, y in zip((x - mu) / sd, ys):
                guess = mem[int(np.argmin(((keys - q) ** 2).sum(1)))]
                k = prefix_len(guess, y)
                hits += [k >= min(j, len(y)) for j in (1, 2, 3)]      # short chunks: all of them
                prefix += k / len(y)
                majority += y[0] == top
                n += 1
    print(f"{a.data}: FAST scale {a.scale:g}, vocab {a.vocab_size}, T {a.horizon}; {n} held-out chunks")
    print(f"1-NN on privileged state: first token {hits[0] / n:.3f}, first 2 {hits[1] / n:.3f}, first 3 {hits[2] / n:.3f}, "
          f"prefix ratio {prefix / n:.3f} | per-task majority first token {majority / n:.3f}")
    hit = np.mean([bool(by_words[w]) and by_words[w].most_common(1)[0][0] == t for w, t in words_val])
    print(f"majority first token given the reasoning's motion words (signs per axis, gripper): {hit:.3f} "
          f"of {len(words_val)} held-out chunks")


if __name__ == "__main__":
    main()
