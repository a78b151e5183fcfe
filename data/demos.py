"""Demonstration datasets: the mini-LIBERO demo format and its reader, and `open_dataset` for every format.

On-disk format (directory, format tag "mini-libero-demos/1"; written by data.mini_libero.write_demos, i.e.
`python -m data.mini_libero demos`):

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

import numpy as np

# EpisodeDataset and its helpers live in data/episodes.py; the names are re-exported here, where the stages
# have always imported them from (`from data.demos import DemoDataset, chunk_episode, open_dataset`).
from data.episodes import DatasetError, EpisodeDataset, chunk_episode, is_val, noop_mask, require  # noqa: F401
from data.lerobot import LeRobotDataset
from data.libero_hdf5 import LiberoHDF5Dataset

FORMAT = "mini-libero-demos/1"
DEMO_INIT_OFFSET = 1000          # demos use scene samples 1000, 1001, …; evaluation uses 0..49


class DemoDataset(EpisodeDataset):
    """mini-LIBERO demos (the format above): the only one with privileged sim_state and phase."""

    privileged = True
    keys = ("agentview_rgb", "eye_in_hand_rgb", "state", "actions", "sim_state", "phase")

    def __init__(self, root: str, drop_noops: bool = False):
        self.root = root
        meta_path = os.path.join(root, "meta.json")
        if not os.path.isfile(meta_path):
            raise DatasetError(f"{root}: not a demo dataset (expected meta.json; generate one with "
                             f"`python -m data.mini_libero demos --out {root}`)")
        with open(meta_path) as f:
            self.meta = json.load(f)
        if self.meta.get("format") != FORMAT:
            raise DatasetError(f"{meta_path}: expected format {FORMAT!r}, found {self.meta.get('format')!r}")
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
            raise DatasetError(f"{path}: unreadable episode ({e})") from None


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
        raise DatasetError(f"{path}: no such dataset (generate mini-LIBERO demos with "
                         f"`python -m data.mini_libero demos --out {path}`, or see the README's datasets section)")
    raise DatasetError(f"{path}: unknown dataset format (expected mini-LIBERO meta.json, LeRobot meta/info.json "
                     f"or LIBERO .hdf5 files)")


def open_dataset(path: str, fmt: str = "auto", drop_noops: bool = False) -> EpisodeDataset:
    """The one entry point the stages use: a DemoDataset-compatible reader for `path` in format `fmt`
    (auto | mini | libero_hdf5 | lerobot); drop_noops removes OpenVLA's no-op steps."""
    if fmt not in ("auto", *FORMATS):
        raise DatasetError(f"--data-format {fmt!r}: expected auto, {', '.join(FORMATS)}")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "mini":
        return DemoDataset(path, drop_noops=drop_noops)
    if fmt == "libero_hdf5":
        return LiberoHDF5Dataset(path, drop_noops=drop_noops)
    return LeRobotDataset(path, drop_noops=drop_noops)
