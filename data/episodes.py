"""What every dataset reader shares: the `EpisodeDataset` interface the stages read, and the helpers behind it.

The readers (data/demos.py: mini-LIBERO demos; data/libero_hdf5.py: LIBERO's HDF5 files; data/lerobot.py:
LeRobot v2.x parquet) subclass `EpisodeDataset` and import the helpers from here: splits (`is_val`,
`split_by_task`), action chunks (`chunk_episode`), OpenVLA's no-op rule (`noop_mask`), statistics (`describe`),
optional dependencies (`require`). This module imports no other reader, so data/ has no import cycle:
episodes <- readers <- demos.open_dataset <- mini_libero's command line.

Bad data. A dataset that is missing, malformed or cut short raises `DatasetError` with a one-line message
naming the file and what was expected; the running stage reports it as "stage.py: message" and exits 1
(config.exits_on_bad_files), without a traceback.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os

import numpy as np

from config import BadFileError, write_json

VAL_EVERY = 10                   # demo j of a task is held out when j % VAL_EVERY == VAL_EVERY - 1
STATS_FILE = "nanoroboalign-stats"   # cached statistics of a real dataset: <root>/nanoroboalign-stats[-noops].json


class DatasetError(BadFileError):
    """A dataset handed to a stage is missing, malformed or cut short; the message names the file."""


def is_val(j: int, per_task: int) -> bool:
    """Demo j of a task is held out every VAL_EVERY demos; small sets (2..9 per task) hold out their last."""
    return j % VAL_EVERY == VAL_EVERY - 1 or (1 < per_task < VAL_EVERY and j == per_task - 1)


def describe(values: np.ndarray) -> dict:
    """Per-dimension mean, std, min, max and 1st/99th percentiles of values [N, D] (what stats.json holds)."""
    q = np.percentile(values, [1, 99], axis=0)
    return {"mean": values.mean(0).tolist(), "std": values.std(0).tolist(), "min": values.min(0).tolist(),
            "max": values.max(0).tolist(), "q01": q[0].tolist(), "q99": q[1].tolist()}


def require(module: str, what: str):
    """Import an optional dependency, or exit with the install command (requirements-data.txt)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DatasetError(f"{what} needs the optional package {module!r}: pip install -r requirements-data.txt") from None


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


def noop_mask(actions: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """bool [T]: OpenVLA's no-op test (regenerate_libero_dataset.py): |Δpos, Δrot| < eps and, after the first
    step, the gripper command equal to the previous one."""
    still = np.linalg.norm(actions[:, :6], axis=1) < eps
    same_grip = np.concatenate([[True], actions[1:, 6] == actions[:-1, 6]])
    return still & same_grip


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
            raise DatasetError(f"{self._where(i)}: no {', '.join(missing)} in this {self.meta['format']} dataset "
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
                               "actions": describe(acts), "state": describe(states)}
                try:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    write_json(path, self._stats)
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
