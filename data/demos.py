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

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict
from multiprocessing import get_context

import numpy as np

from data.scenes import DEFAULT_LAYOUT, suite_tasks

FORMAT = "mini-libero-demos/1"
DEMO_INIT_OFFSET = 1000          # demos use scene samples 1000, 1001, …; evaluation uses 0..49
VAL_EVERY = 10                   # demo j of a task is held out when j % VAL_EVERY == VAL_EVERY - 1
STATS_FILE = "nanoroboalign-stats"   # cached statistics of a real dataset: <root>/nanoroboalign-stats[-noops].json


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


def successful_episodes(task, per_task: int, seed: int = 0, first_init: int = DEMO_INIT_OFFSET, **kw):
    """Yield (j, k, episode) for the first `per_task` successful expert episodes of `task`, from scene samples
    first_init, first_init + 1, … (k: the sample used). Failures are skipped: LIBERO's datasets keep successful demos
    only. kw goes to data.mini_libero.expert_episode (size, render, expert_cls)."""
    from data.mini_libero import expert_episode
    j, k = 0, first_init
    while j < per_task:
        if k > first_init + 4 * per_task + 20:
            raise RuntimeError(f"expert keeps failing on {task.suite} task {task.task_id}")
        ep = expert_episode(task, k, seed, **kw)
        k += 1
        if ep["success"]:
            yield j, k - 1, ep
            j += 1


def _generate_task(job):
    """Worker: successful demos for one task, saved as npz files; returns their episode records."""
    suite, task_id, per_task, size, seed, tmpdir, first_index, first_init, layout = job
    task = suite_tasks(suite, layout)[task_id]
    recs = []
    for j, k, ep in successful_episodes(task, per_task, seed, first_init, size=size):
        idx = first_index + j
        fname = f"episodes/{idx:06d}.npz"
        np.savez_compressed(os.path.join(tmpdir, fname),
                            agentview_rgb=np.stack(ep["agentview_rgb"]), eye_in_hand_rgb=np.stack(ep["eye_in_hand_rgb"]),
                            state=np.stack(ep["state"]), actions=np.stack(ep["actions"]),
                            sim_state=np.stack(ep["sim_state"]), phase=np.array(ep["phase"]))
        recs.append({"index": idx, "file": fname, "suite": suite, "task_id": task_id, "task": task.name,
                     "language": task.language, "init_state": k, "length": ep["length"],
                     "split": "val" if is_val(j, per_task) else "train"})
    return recs


def write_demos(out: str, suites: list[str], per_task: int = 10, size: int = 128, seed: int = 0,
                workers: int = 2, first_init: int = DEMO_INIT_OFFSET, layout: str = DEFAULT_LAYOUT) -> dict:
    """Generate the dataset into `out` (built in a temp dir, then renamed: never half-written)."""
    t0 = time.time()
    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "episodes"))
    tasks = [(s, t.task_id) for s in suites for t in suite_tasks(s, layout)]
    jobs = [(s, i, per_task, size, seed, tmp, n * per_task, first_init, layout) for n, (s, i) in enumerate(tasks)]
    if workers > 1:
        with get_context("spawn" if os.name == "nt" else "fork").Pool(workers) as pool:
            recs = [r for rs in pool.map(_generate_task, jobs) for r in rs]
    else:
        recs = [r for job in jobs for r in _generate_task(job)]
    meta = {"format": FORMAT, "image_size": size, "control_hz": 20, "expert_seed": seed, "layout": layout,
            "image_convention": "upright: rotated 180 degrees from the raw OpenGL-convention env frames",
            "tasks": [], "keys": {"state": "eef_pos(3) eef_axis_angle(3) gripper_qpos(2)",
                                  "actions": "dpos(3) daxis_angle(3) gripper(-1 open, +1 close)"}}
    for s in suites:
        for t in suite_tasks(s, layout):
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


class EpisodeDataset:
    """What every stage reads, whatever the format: episode records up front, arrays on demand.

    Subclasses fill `root`, `meta` (format, image_size, control_hz, image_convention, tasks) and `episodes`
    (dicts with index, suite, task_id, task, language, length, split) and implement `_read(i, keys)`, which
    returns episode i's arrays at their stored length: agentview_rgb / eye_in_hand_rgb uint8 [T, H, W, 3]
    upright, state float32 [T, 8], actions float32 [T, 7] (gripper -1 open, +1 close). The base class adds
    no-op filtering, lazily computed and cached statistics, chunking and the summary."""

    privileged = False        # True when episodes carry sim_state + phase (mini-LIBERO only): VQA and captions need them
    keys: tuple = ("agentview_rgb", "eye_in_hand_rgb", "state", "actions")

    def __len__(self) -> int:
        return len(self.episodes)

    def indices(self, split: str | None = None) -> list[int]:
        return [i for i, e in enumerate(self.episodes) if split in (None, "all") or e["split"] == split]

    def _read(self, i: int, keys: list) -> dict:
        raise NotImplementedError

    def _where(self, i: int) -> str:
        """The file episode i lives in (for error messages)."""
        return self.root

    def load(self, i: int, keys=None) -> dict:
        """Arrays of episode i (all keys, or only `keys`); no-op steps dropped when the dataset was opened with
        drop_noops."""
        keys = list(keys or self.keys)
        missing = [k for k in keys if k not in self.keys]
        if missing:
            raise SystemExit(f"{self._where(i)}: no {', '.join(missing)} in this {self.meta['format']} dataset "
                             f"(it has {', '.join(self.keys)})")
        out = self._read(i, keys)
        keep = self._keep.get(i) if hasattr(self, "_keep") else None
        return out if keep is None else {k: v[keep] for k, v in out.items()}

    def actions(self, i: int) -> np.ndarray:
        if not hasattr(self, "_actions"):
            self._actions = {}
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

    # -------------------------------------------------------------- no-op filtering (OpenVLA's rule)
    def drop_noop_steps(self) -> None:
        """Drop steps whose action moves nothing (|a[:6]| < 1e-4) and leaves the gripper command unchanged,
        as OpenVLA's LIBERO regeneration does; episodes left empty are dropped. Reads every episode's actions."""
        self._keep, kept = {}, []
        for i, rec in enumerate(self.episodes):
            keep = ~noop_mask(self._read(i, ["actions"])["actions"])
            if keep.any():
                self._keep[len(kept)] = keep
                kept.append({**rec, "length": int(keep.sum()), "noops_dropped": int((~keep).sum())})
        self.episodes, self._actions = kept, {}
        for j, rec in enumerate(self.episodes):
            rec["index"] = j

    # -------------------------------------------------------------- statistics, computed once and cached
    def _fingerprint(self) -> str:
        """Changes when any file of the dataset changes (sizes and modification times)."""
        h = hashlib.sha1(f"{self.meta['format']} noops={bool(getattr(self, '_keep', None))}".encode())
        files = [self.root] if os.path.isfile(self.root) else \
            sorted(os.path.join(dp, f) for dp, _, fs in os.walk(self.root) for f in fs if not f.startswith(STATS_FILE))
        for f in files:
            st = os.stat(f)
            h.update(f"{os.path.relpath(f, self.root)} {st.st_size} {st.st_mtime_ns}".encode())
        return h.hexdigest()

    def stats_path(self) -> str:
        """Next to the dataset when its folder is writable, else in $NANOROBOALIGN_CACHE (~/.cache/nanoroboalign)."""
        folder = self.root if os.path.isdir(self.root) else os.path.dirname(os.path.abspath(self.root))
        name = (os.path.basename(self.root) + "." if os.path.isfile(self.root) else "") + STATS_FILE + \
            ("-noops" if getattr(self, "_keep", None) else "") + ".json"
        if os.access(folder, os.W_OK):
            return os.path.join(folder, name)
        cache = os.environ.get("NANOROBOALIGN_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "nanoroboalign"))
        return os.path.join(cache, hashlib.sha1(os.path.abspath(self.root).encode()).hexdigest()[:16], name)

    @property
    def stats(self) -> dict:
        """Per-dimension mean, std, min, max, q01, q99 of actions (7) and state (8) over all episodes."""
        if getattr(self, "_stats", None) is None:
            path, fp = self.stats_path(), self._fingerprint()
            try:
                with open(path) as f:
                    cached = json.load(f)
                if cached.get("fingerprint") == fp:
                    self._stats = cached
            except (OSError, ValueError):
                pass
            if getattr(self, "_stats", None) is None:
                arrays = [self.load(i, ["actions", "state"]) for i in range(len(self))]
                acts = np.concatenate([a["actions"] for a in arrays])
                states = np.concatenate([a["state"] for a in arrays])
                self._stats = {"fingerprint": fp, "n_episodes": len(self), "n_steps": int(len(acts)),
                               "actions": _describe(acts), "state": _describe(states)}
                try:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    _atomic_json(path, self._stats)
                except OSError as e:
                    print(f"note: could not cache statistics at {path} ({e})")
        return self._stats

    @stats.setter
    def stats(self, value: dict) -> None:
        self._stats = value

    def print_summary(self) -> None:
        by = {}
        for e in self.episodes:
            d = by.setdefault(e["suite"], {"episodes": 0, "steps": 0, "val": 0})
            d["episodes"] += 1
            d["steps"] += e["length"]
            d["val"] += e["split"] == "val"
        print(f"{self.root}: {self.meta['format']}, {len(self)} episodes, {self.stats['n_steps']} steps, "
              f"{self.meta['image_size']}px, {len(self.meta['tasks'])} tasks")
        for s, d in by.items():
            print(f"  {s:8s} {d['episodes']:4d} episodes ({d['val']} val), {d['steps']:6d} steps, "
                  f"mean length {d['steps'] / d['episodes']:.0f}")
        a = self.stats["actions"]
        print("  action q01 " + " ".join(f"{v:+.2f}" for v in a["q01"]))
        print("  action q99 " + " ".join(f"{v:+.2f}" for v in a["q99"]))


class DemoDataset(EpisodeDataset):
    """mini-LIBERO demos (the format above): the only one with privileged sim_state and phase."""

    privileged = True
    keys = ("agentview_rgb", "eye_in_hand_rgb", "state", "actions", "sim_state", "phase")

    def __init__(self, root: str, drop_noops: bool = False):
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
        if drop_noops:
            self.drop_noop_steps()                   # statistics are then computed (and cached) on what is kept
        else:
            with open(os.path.join(root, "stats.json")) as f:
                self.stats = json.load(f)

    def _where(self, i: int) -> str:
        return os.path.join(self.root, self.episodes[i]["file"])

    def _read(self, i: int, keys: list) -> dict:
        path = self._where(i)
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in keys}
        except (OSError, KeyError, ValueError) as e:
            raise SystemExit(f"{path}: unreadable episode ({e})") from None


def noop_mask(actions: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """bool [T]: OpenVLA's no-op test (regenerate_libero_dataset.py): |Δpos, Δrot| < eps and, after the first
    step, the gripper command equal to the previous one."""
    still = np.linalg.norm(actions[:, :6], axis=1) < eps
    same_grip = np.concatenate([[True], actions[1:, 6] == actions[:-1, 6]])
    return still & same_grip


# ----------------------------------------------------------------------------- every format behind one call
FORMATS = ("mini", "libero_hdf5", "lerobot")


def detect_format(path: str) -> str:
    """mini (meta.json + episodes.jsonl), lerobot (meta/info.json) or libero_hdf5 (.hdf5 files, or one file)."""
    if os.path.isfile(os.path.join(path, "meta.json")):
        return "mini"
    if os.path.isfile(os.path.join(path, "meta", "info.json")):
        return "lerobot"
    if path.endswith((".hdf5", ".h5")) and os.path.isfile(path):
        return "libero_hdf5"
    if os.path.isdir(path) and any(f.endswith(".hdf5") for _, _, fs in os.walk(path) for f in fs):
        return "libero_hdf5"
    if not os.path.exists(path):
        raise SystemExit(f"{path}: no such dataset (generate mini-LIBERO demos with "
                         f"`python -m data.mini_libero demos --out {path}`, or see the README's datasets section)")
    raise SystemExit(f"{path}: unknown dataset format (expected mini-LIBERO meta.json, LeRobot meta/info.json "
                     f"or LIBERO .hdf5 files)")


def open_dataset(path: str, fmt: str = "auto", drop_noops: bool = False) -> EpisodeDataset:
    """The one entry point the stages use: a DemoDataset-compatible reader for `path` in format `fmt`
    (auto | mini | libero_hdf5 | lerobot); drop_noops removes OpenVLA's no-op steps."""
    if fmt not in ("auto", *FORMATS):
        raise SystemExit(f"--data-format {fmt!r}: expected auto, {', '.join(FORMATS)}")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "mini":
        return DemoDataset(path, drop_noops=drop_noops)
    if fmt == "libero_hdf5":
        from data.libero_hdf5 import LiberoHDF5Dataset
        return LiberoHDF5Dataset(path, drop_noops=drop_noops)
    from data.lerobot import LeRobotDataset
    return LeRobotDataset(path, drop_noops=drop_noops)


def require(module: str, what: str):
    """Import an optional dependency, or exit with the install command (requirements-data.txt)."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise SystemExit(f"{what} needs the optional package {module!r}: pip install -r requirements-data.txt") from None


def split_by_task(recs: list[dict]) -> None:
    """Set each record's split as mini-LIBERO does: per task, every 10th episode (the last of 2..9) is val."""
    per_task = {}
    for r in recs:
        per_task.setdefault((r["suite"], r["task_id"]), []).append(r)
    for group in per_task.values():
        for j, r in enumerate(group):
            r["split"] = "val" if is_val(j, len(group)) else "train"


def chunk_episode(actions: np.ndarray, horizon: int) -> np.ndarray:
    """[T, 7] → [T, horizon, 7]: chunk t = actions[t : t + horizon], padded past the end with holds."""
    hold = np.zeros((horizon, actions.shape[1]), actions.dtype)
    hold[:, -1] = actions[-1, -1]
    padded = np.concatenate([actions, hold])
    idx = np.arange(len(actions))[:, None] + np.arange(horizon)[None, :]
    return padded[idx]
