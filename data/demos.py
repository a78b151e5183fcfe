"""Demonstration datasets: write expert demos to disk, read episodes and action chunks lazily.

On-disk format (directory, format tag "mini-libero-demos/1"):

    meta.json        format, image size, control rate, image convention, the tasks (suite, id, name,
                     language, the scene's bodies) and the key layout below
    episodes.jsonl   one JSON line per episode: index, file, suite, task_id, task, language,
                     init_state (index of the scene sample), length, split ("train" | "val")
    stats.json       per-dimension statistics of `actions` (7) and `state` (8): mean, std, min, max,
                     q01, q99 (1st/99th percentiles, what quantile normalisation uses)
    episodes/NNNNNN.npz  (np.savez_compressed; no pickles)
        agentview_rgb    uint8   [T, H, W, 3]  upright (rotated 180° from the env's raw frames)
        eye_in_hand_rgb  uint8   [T, H, W, 3]  upright
        state            float32 [T, 8]   eef pos (3) + eef axis-angle (3) + gripper qpos (2), as LIBERO
        actions          float32 [T, 7]   Δxyz (3), Δaxis-angle (3), gripper (−1 open, +1 close)
        sim_state        float64 [T, S]   privileged flat world state (data.world.World.get_state)
        phase            str     [T]      the expert's phase ("grasp the black bowl", …)

Demos start from scene samples 1000+j, never from the 50 evaluation init states (0..49), so closed-loop
evaluation measures generalisation to new layouts, as LIBERO's does. Every 10th demo of a task is "val".
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from multiprocessing import get_context

import numpy as np

from data.scenes import suite_tasks

FORMAT = "mini-libero-demos/1"
DEMO_INIT_OFFSET = 1000          # demos use scene samples 1000, 1001, …; evaluation uses 0..49
VAL_EVERY = 10                   # demo j of a task is held out when j % VAL_EVERY == VAL_EVERY - 1


def is_val(j: int, per_task: int) -> bool:
    """Demo j of a task is held out every VAL_EVERY demos; small sets (2..9 per task) hold out their last."""
    return j % VAL_EVERY == VAL_EVERY - 1 or (1 < per_task < VAL_EVERY and j == per_task - 1)


def _atomic_json(path: str, obj, lines: bool = False) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        if lines:
            f.writelines(json.dumps(o) + "\n" for o in obj)
        else:
            json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _describe(values: np.ndarray) -> dict:
    q = np.percentile(values, [1, 99], axis=0)
    return {"mean": values.mean(0).tolist(), "std": values.std(0).tolist(), "min": values.min(0).tolist(),
            "max": values.max(0).tolist(), "q01": q[0].tolist(), "q99": q[1].tolist()}


def _generate_task(job):
    """Worker: successful demos for one task, saved as npz files; returns their episode records."""
    from data.mini_libero import expert_episode
    suite, task_id, per_task, size, seed, tmpdir, first_index = job
    task = suite_tasks(suite)[task_id]
    recs, j, k = [], 0, DEMO_INIT_OFFSET
    while j < per_task:
        if k > DEMO_INIT_OFFSET + 4 * per_task + 20:
            raise RuntimeError(f"expert keeps failing on {suite} task {task_id}")
        ep = expert_episode(task, k, seed, size=size)
        k += 1
        if not ep["success"]:
            continue                           # keep successful demos only, as LIBERO's datasets do
        idx = first_index + j
        fname = f"episodes/{idx:06d}.npz"
        np.savez_compressed(os.path.join(tmpdir, fname),
                            agentview_rgb=np.stack(ep["agentview_rgb"]), eye_in_hand_rgb=np.stack(ep["eye_in_hand_rgb"]),
                            state=np.stack(ep["state"]), actions=np.stack(ep["actions"]),
                            sim_state=np.stack(ep["sim_state"]), phase=np.array(ep["phase"]))
        recs.append({"index": idx, "file": fname, "suite": suite, "task_id": task_id, "task": task.name,
                     "language": task.language, "init_state": k - 1, "length": ep["length"],
                     "split": "val" if is_val(j, per_task) else "train"})
        j += 1
    return recs


def write_demos(out: str, suites: list[str], per_task: int = 10, size: int = 128, seed: int = 0,
                workers: int = 2) -> dict:
    """Generate the dataset into `out` (built in a temp dir, then renamed: never half-written)."""
    t0 = time.time()
    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "episodes"))
    tasks = [(s, t.task_id) for s in suites for t in suite_tasks(s)]
    jobs = [(s, i, per_task, size, seed, tmp, n * per_task) for n, (s, i) in enumerate(tasks)]
    if workers > 1:
        with get_context("spawn" if os.name == "nt" else "fork").Pool(workers) as pool:
            recs = [r for rs in pool.map(_generate_task, jobs) for r in rs]
    else:
        recs = [r for job in jobs for r in _generate_task(job)]
    meta = {"format": FORMAT, "image_size": size, "control_hz": 20, "expert_seed": seed,
            "image_convention": "upright: rotated 180 degrees from the raw OpenGL-convention env frames",
            "tasks": [], "keys": {"state": "eef_pos(3) eef_axis_angle(3) gripper_qpos(2)",
                                  "actions": "dpos(3) daxis_angle(3) gripper(-1 open, +1 close)"}}
    for s in suites:
        for t in suite_tasks(s):
            world, _ = t.scene(0)
            meta["tasks"].append({"suite": s, "task_id": t.task_id, "name": t.name, "language": t.language,
                                  "bodies": [asdict(b) for b in world.bodies]})
    acts = np.concatenate([np.load(os.path.join(tmp, r["file"]))["actions"] for r in recs])
    states = np.concatenate([np.load(os.path.join(tmp, r["file"]))["state"] for r in recs])
    stats = {"n_episodes": len(recs), "n_steps": int(len(acts)), "actions": _describe(acts), "state": _describe(states)}
    _atomic_json(os.path.join(tmp, "meta.json"), meta)
    _atomic_json(os.path.join(tmp, "stats.json"), stats)
    _atomic_json(os.path.join(tmp, "episodes.jsonl"), recs, lines=True)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    size_mb = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(out) for f in fs) / 2**20
    print(f"wrote {len(recs)} demos, {len(acts)} steps, {size_mb:.1f} MB to {out} in {time.time() - t0:.1f}s")
    return {"episodes": len(recs), "steps": int(len(acts)), "mb": size_mb, "seconds": time.time() - t0}


class DemoDataset:
    """Lazy reader: episode metadata up front, arrays only when an episode or its actions are asked for."""

    def __init__(self, root: str):
        self.root = root
        meta_path = os.path.join(root, "meta.json")
        if not os.path.isfile(meta_path):
            raise SystemExit(f"{root}: not a demo dataset (expected meta.json; generate one with "
                             f"`python -m data.mini_libero demos --out {root}`)")
        with open(meta_path) as f:
            self.meta = json.load(f)
        if self.meta.get("format") != FORMAT:
            raise SystemExit(f"{meta_path}: expected format {FORMAT!r}, found {self.meta.get('format')!r}")
        with open(os.path.join(root, "episodes.jsonl")) as f:
            self.episodes = [json.loads(line) for line in f if line.strip()]
        with open(os.path.join(root, "stats.json")) as f:
            self.stats = json.load(f)
        self._actions: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.episodes)

    def indices(self, split: str | None = None) -> list[int]:
        return [i for i, e in enumerate(self.episodes) if split in (None, "all") or e["split"] == split]

    def load(self, i: int, keys=None) -> dict:
        """Arrays of episode i (all keys, or only `keys`): see the module docstring for shapes."""
        path = os.path.join(self.root, self.episodes[i]["file"])
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in (keys or z.files)}
        except (OSError, KeyError, ValueError) as e:
            raise SystemExit(f"{path}: unreadable episode ({e})") from None

    def actions(self, i: int) -> np.ndarray:
        if i not in self._actions:
            self._actions[i] = self.load(i, ["actions"])["actions"]
        return self._actions[i]

    def action_chunks(self, horizon: int, split: str | None = "train", stride: int = 1) -> np.ndarray:
        """float32 [N, horizon, 7]: the chunk starting at every `stride`-th step of every episode.
        Chunks running past an episode's end are padded with a "hold" action (no motion, the last
        gripper command): what the robot does once the task is done."""
        out = []
        for i in self.indices(split):
            out.append(chunk_episode(self.actions(i), horizon)[::stride])
        return np.concatenate(out).astype(np.float32)

    def print_summary(self) -> None:
        by = {}
        for e in self.episodes:
            d = by.setdefault(e["suite"], {"episodes": 0, "steps": 0, "val": 0})
            d["episodes"] += 1
            d["steps"] += e["length"]
            d["val"] += e["split"] == "val"
        print(f"{self.root}: {len(self)} episodes, {self.stats['n_steps']} steps, "
              f"{self.meta['image_size']}px, {len(self.meta['tasks'])} tasks")
        for s, d in by.items():
            print(f"  {s:8s} {d['episodes']:4d} episodes ({d['val']} val), {d['steps']:6d} steps, "
                  f"mean length {d['steps'] / d['episodes']:.0f}")
        a = self.stats["actions"]
        print("  action q01 " + " ".join(f"{v:+.2f}" for v in a["q01"]))
        print("  action q99 " + " ".join(f"{v:+.2f}" for v in a["q99"]))


def chunk_episode(actions: np.ndarray, horizon: int) -> np.ndarray:
    """[T, 7] → [T, horizon, 7]: chunk t = actions[t : t + horizon], padded past the end with holds."""
    hold = np.zeros((horizon, actions.shape[1]), actions.dtype)
    hold[:, -1] = actions[-1, -1]
    padded = np.concatenate([actions, hold])
    idx = np.arange(len(actions))[:, None] + np.arange(horizon)[None, :]
    return padded[idx]
