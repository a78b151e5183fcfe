"""Reader for the original LIBERO HDF5 demos (one file per task, `<suite>/<TASK>_demo.hdf5`, 50 demos each).

Layout read here (LIBERO's `robomimic`-style files):

    data                       attrs: problem_info (JSON with "language_instruction"),
                               macros_image_convention ("opengl": images upside down), env_name, …
    data/demo_<i>/actions      float  [T, 7]   Δpos (3), Δaxis-angle (3), gripper (-1 open, +1 close)
    data/demo_<i>/obs/agentview_rgb     uint8 [T, 128, 128, 3]   upside down (OpenGL convention)
    data/demo_<i>/obs/eye_in_hand_rgb   uint8 [T, 128, 128, 3]   upside down
    data/demo_<i>/obs/ee_states         float [T, 6]   eef position (3) + axis-angle (3)
    data/demo_<i>/obs/gripper_states    float [T, 2]   finger joint positions

What the stages get (the EpisodeDataset interface of data/episodes.py):
  * images rotated 180° (both axes flipped) into the project's upright convention, the same operation
    OpenVLA's RLDS and the LeRobot LIBERO datasets apply, so frames match theirs and eval_libero.py's;
    files whose macros_image_convention is "opencv" are taken as already upright;
  * state = ee_states (6) + gripper_states (2) = 8-D float32, the mini world's and openpi's layout;
  * actions float32 [T, 7] as stored;
  * language = problem_info's language_instruction; suite = the file's folder (libero_spatial, …),
    task_id = the file's place in its folder sorted by name (not LIBERO's benchmark order), task = file stem;
  * demos sorted numerically (demo_2 before demo_10); per task every 10th demo is "val" (as mini-LIBERO).

A directory of such files (suite folders, e.g. LIBERO-datasets/libero_spatial/*.hdf5) or one file is a dataset.
Every demo's keys and shapes are checked when the dataset opens (metadata only, no image is read), so a missing
key, a wrong shape or a truncated demo is a one-line error naming the file and key.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np

from data.episodes import DatasetError, EpisodeDataset, require, split_by_task

FORMAT = "libero_hdf5"
IMAGES = {"agentview_rgb": "obs/agentview_rgb", "eye_in_hand_rgb": "obs/eye_in_hand_rgb"}
TRAILING = {"actions": (7,), "obs/ee_states": (6,), "obs/gripper_states": (2,)}   # shape after T


def _h5py():
    return require("h5py", "reading LIBERO HDF5 files")


def _files(root: str) -> list[str]:
    if os.path.isfile(root):
        return [root]
    files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(root) for f in fs if f.endswith((".hdf5", ".h5")))
    if not files:
        raise DatasetError(f"{root}: no LIBERO .hdf5 files (expected <suite>/<TASK>_demo.hdf5)")
    return files


def _demo_number(name: str) -> int:
    m = re.fullmatch(r"demo_(\d+)", name)
    return int(m.group(1)) if m else -1


class LiberoHDF5Dataset(EpisodeDataset):
    keys = ("agentview_rgb", "eye_in_hand_rgb", "state", "actions")

    def __init__(self, root: str, drop_noops: bool = False):
        h5py = _h5py()
        self.root = root.rstrip("/") if len(root) > 1 else root
        self.episodes, tasks, sizes, self._flip = [], [], set(), {}
        task_ids = {}
        for path in _files(self.root):
            rel = os.path.relpath(path, self.root) if os.path.isdir(self.root) else os.path.basename(path)
            suite = os.path.dirname(rel).replace(os.sep, "/") or os.path.basename(os.path.dirname(os.path.abspath(path)))
            task = re.sub(r"_demo$", "", os.path.splitext(os.path.basename(path))[0])
            task_id = task_ids[suite] = task_ids.get(suite, -1) + 1
            try:
                f = h5py.File(path, "r")
            except OSError as e:
                raise DatasetError(f"{path}: not a readable HDF5 file ({str(e).splitlines()[0]})") from None
            with f:
                if "data" not in f:
                    raise DatasetError(f"{path}: no 'data' group (expected LIBERO's data/demo_i/...)")
                data = f["data"]
                language = self._language(path, data.attrs)
                self._flip[path] = str(data.attrs.get("macros_image_convention", "opengl")) != "opencv"
                demos = sorted((k for k in data if _demo_number(k) >= 0), key=_demo_number)
                if not demos:
                    raise DatasetError(f"{path}: no data/demo_<i> groups")
                for d in demos:
                    T, hw = self._check(path, data[d], d)
                    sizes.add(hw)
                    self.episodes.append({"index": len(self.episodes), "file": rel, "demo": d, "suite": suite,
                                          "task_id": task_id, "task": task, "language": language, "length": T})
            tasks.append({"suite": suite, "task_id": task_id, "name": task, "language": language})
        split_by_task(self.episodes)
        self.meta = {"format": FORMAT, "image_size": max(max(s) for s in sizes), "control_hz": 20,
                     "image_convention": "upright: LIBERO's upside-down (OpenGL) frames rotated 180 degrees on read",
                     "tasks": tasks, "keys": {"state": "ee_states(6: pos + axis-angle) gripper_states(2)",
                                              "actions": "dpos(3) daxis_angle(3) gripper(-1 open, +1 close)"}}
        if drop_noops:
            self.drop_noop_steps()

    @staticmethod
    def _language(path, attrs) -> str:
        try:
            info = attrs["problem_info"]
            info = json.loads(info.decode() if isinstance(info, bytes) else str(info))
            return str(info["language_instruction"]).strip()
        except (KeyError, ValueError, TypeError, AttributeError):
            raise DatasetError(f"{path}: data attribute 'problem_info' must be JSON with a 'language_instruction'") from None

    @staticmethod
    def _check(path, g, demo) -> tuple[int, tuple]:
        """(T, (H, W)) of one demo after checking every key the reader uses."""
        need = ["actions", "obs/ee_states", "obs/gripper_states", *IMAGES.values()]
        for k in need:
            if k not in g:
                raise DatasetError(f"{path}: data/{demo}/{k} is missing")
        T = g["actions"].shape[0]
        for k, tail in TRAILING.items():
            if g[k].shape != (T, *tail):
                raise DatasetError(f"{path}: data/{demo}/{k}: expected shape ({T}, {', '.join(map(str, tail))}), "
                                 f"found {g[k].shape}")
        hw = None
        for k in IMAGES.values():
            s, dt = g[k].shape, g[k].dtype
            if len(s) != 4 or s[0] != T or s[3] != 3 or dt != np.uint8:
                raise DatasetError(f"{path}: data/{demo}/{k}: expected uint8 ({T}, H, W, 3), found {dt} {s}")
            hw = hw or s[1:3]
        if T == 0:
            raise DatasetError(f"{path}: data/{demo} has no steps")
        return T, hw

    def _where(self, i: int) -> str:
        return os.path.join(self.root, self.episodes[i]["file"]) if os.path.isdir(self.root) else self.root

    def _read(self, i: int, keys: list) -> dict:
        rec, path = self.episodes[i], self._where(i)
        out, key = {}, None
        try:
            with _h5py().File(path, "r") as f:
                g = f["data"][rec["demo"]]
                for key in keys:
                    if key in IMAGES:
                        img = g[IMAGES[key]][()]
                        out[key] = np.ascontiguousarray(img[:, ::-1, ::-1]) if self._flip[path] else img
                    elif key == "state":
                        out[key] = np.concatenate([g["obs/ee_states"][()], g["obs/gripper_states"][()]], 1).astype(np.float32)
                    else:
                        out[key] = g["actions"][()].astype(np.float32)
        except (OSError, KeyError, ValueError) as e:
            raise DatasetError(f"{path}: data/{rec['demo']}/{key}: unreadable ({str(e).splitlines()[0]})") from None
        return out
