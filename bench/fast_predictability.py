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
    python bench/fast_predictability.py --generate 10 --controller axis --horizon 5 --vocab-size 256
        # would another expert or FAST setting make the tokens decidable? episodes made on the fly, no images (~6 s)

Controllers (--controller, the expert's translation law; `line` is data/expert.py's, the one the demos use):
    line  P-control along a straight line, the largest axis capped at the speed: the other axes move at
          continuous fractions of it, set by the remaining distance
    axis  each axis capped on its own (bang-bang, L-shaped paths): an axis moves at full speed or arrives
    snap  each axis at full speed or 0 (dead zone of half a step), P-control only for the last step
"""
import argparse
import collections
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import prompts  # noqa: E402
from data.demos import DemoDataset, chunk_episode, is_val  # noqa: E402
from data.mini_libero import successful_episodes  # noqa: E402
from data.expert import Expert  # noqa: E402
from data.scenes import SUITES, suite_tasks  # noqa: E402
from data.world import POS_SCALE  # noqa: E402
from fast_tokenizer import FastTokenizer  # noqa: E402


class AxisExpert(Expert):
    def _command(self, err, vmax):
        return np.clip(err / POS_SCALE, -vmax, vmax)


class SnapExpert(Expert):
    def _command(self, err, vmax):
        cmd = np.where(np.abs(err) > 0.5 * vmax * POS_SCALE, np.sign(err) * vmax, 0.0)
        return cmd if cmd.any() else err / POS_SCALE


CONTROLLERS = {"line": Expert, "axis": AxisExpert, "snap": SnapExpert}


def generated_episodes(per_task: int, controller: str) -> list:
    """Expert episodes without images, split like the demos: [(record, {sim_state, actions, phase, state})]."""
    out = []
    for suite in SUITES:
        for task in suite_tasks(suite):
            for j, _, ep in successful_episodes(task, per_task, render=False, expert_cls=CONTROLLERS[controller]):
                rec = {"suite": suite, "task_id": task.task_id, "split": "val" if is_val(j, per_task) else "train"}
                out.append((rec, {key: np.stack(ep[key]) for key in ("sim_state", "actions", "phase", "state")}))
    return out


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
    p.add_argument("--horizon", type=int, default=5, help="chunk length T (fast_tokenizer.py's default)")
    p.add_argument("--generate", type=int, default=0, help="make N episodes per task on the fly (no images) instead of reading --data")
    p.add_argument("--controller", default="line", choices=sorted(CONTROLLERS), help="the expert's translation law (with --generate)")
    a = p.parse_args(argv)
    if a.controller != "line" and not a.generate:
        p.error("--controller needs --generate: the demos on disk were made by the line controller")
    if a.generate:
        episodes, source = generated_episodes(a.generate, a.controller), f"{a.controller} expert, {a.generate} per task"
    else:
        ds = DemoDataset(a.data)
        episodes = [(e, ds.load(i, ["sim_state", "actions", "phase", "state"])) for i, e in enumerate(ds.episodes)]
        source = a.data
    train = np.concatenate([chunk_episode(z["actions"], a.horizon) for e, z in episodes if e["split"] == "train"])
    fast = FastTokenizer.fit(train, a.vocab_size, a.scale)
    by_task = collections.defaultdict(lambda: {"train": [], "val": []})
    by_words, words_val = collections.defaultdict(collections.Counter), []
    for e, z in episodes:
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
    print(f"{source}: FAST scale {a.scale:g}, vocab {a.vocab_size}, T {a.horizon}; {n} held-out chunks")
    print(f"1-NN on privileged state: first token {hits[0] / n:.3f}, first 2 {hits[1] / n:.3f}, first 3 {hits[2] / n:.3f}, "
          f"prefix ratio {prefix / n:.3f} | per-task majority first token {majority / n:.3f}")
    hit = np.mean([bool(by_words[w]) and by_words[w].most_common(1)[0][0] == t for w, t in words_val])
    print(f"majority first token given the reasoning's motion words (signs per axis, gripper): {hit:.3f} "
          f"of {len(words_val)} held-out chunks")


if __name__ == "__main__":
    main()
