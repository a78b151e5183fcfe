"""Reader for LeRobot-format datasets, v2.x (one parquet file per episode): LIBERO and BridgeV2.

Layout read here:

    meta/info.json        codebase_version "v2.x", fps, features {name: {dtype, shape}}, data_path (template
                          "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"), chunks_size,
                          video_path (when images are MP4 videos)
    meta/episodes.jsonl   {"episode_index", "tasks": [language, …], "length"} per line
    meta/tasks.jsonl      {"task_index", "task"} per line
    data/chunk-XXX/episode_XXXXXX.parquet   one row per step; image columns are structs {bytes: PNG/JPEG, path}

Which columns feed which array is a profile, picked from the features in info.json (agentview, wrist, state,
actions):
  * libero     physical-intelligence/libero (openpi): image, wrist_image, state (8), actions (7)
  * libero_hf  lerobot/libero, HuggingFaceVLA/libero: observation.images.image, observation.images.image2,
               observation.state (8), action (7)
  * bridge     IPEC-COMMUNITY/bridge_orig_lerobot: observation.images.image_0, no wrist camera,
               observation.state (8: xyz, rpy, pad, gripper; a 7-D state gets the pad inserted), action (7)

Conventions: LeRobot LIBERO frames are already rotated 180° (upright, as the project's), Bridge frames are
upright camera images, so neither is flipped. LIBERO actions are raw (-1 open, +1 close). Bridge's gripper
action is absolute with 1 = open, 0 = closed; it is mapped to the project's convention with g -> 1 - 2g
(open -1, closed +1) and the movement dims stay as stored (Δxyz, Δroll-pitch-yaw). Bridge's state is kept in
its own layout (xyz, roll-pitch-yaw, pad, gripper): the stages only z-score it. Bridge episodes with an empty
instruction are skipped. Bridge has no wrist camera: asking for eye_in_hand_rgb (vla_train.py --wrist) is an
error. Video features (`dtype: video`, e.g. IPEC's MP4s) are decoded with PyAV when it is installed.
Splits: per task, every 10th episode is "val" (as mini-LIBERO).
"""
from __future__ import annotations

import io
import json
import os

import numpy as np

from data.episodes import DatasetError, EpisodeDataset, require, split_by_task

FORMAT = "lerobot"
PROFILES = {
    "libero": {"agentview_rgb": "image", "eye_in_hand_rgb": "wrist_image", "state": "state", "actions": "actions"},
    "libero_hf": {"agentview_rgb": "observation.images.image", "eye_in_hand_rgb": "observation.images.image2",
                  "state": "observation.state", "actions": "action"},
    "bridge": {"agentview_rgb": "observation.images.image_0", "state": "observation.state", "actions": "action"},
}


def _pq():
    return require("pyarrow.parquet", "reading LeRobot parquet files")


def _jsonl(path: str) -> list[dict]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: unreadable JSON lines ({e})") from None


def detect_profile(features: dict, info_path: str) -> str:
    for name, cols in PROFILES.items():
        if all(c in features for c in cols.values()):
            return name
    raise DatasetError(f"{info_path}: unknown LeRobot column layout (expected the features of one of: " +
                     "; ".join(f"{n}: {', '.join(c.values())}" for n, c in PROFILES.items()) + ")")


class LeRobotDataset(EpisodeDataset):

    def __init__(self, root: str, drop_noops: bool = False):
        self.root = root
        info_path = os.path.join(root, "meta", "info.json")
        try:
            with open(info_path) as f:
                self.info = json.load(f)
            features, self.data_path = self.info["features"], self.info["data_path"]
        except (OSError, ValueError, KeyError) as e:
            raise DatasetError(f"{info_path}: expected LeRobot v2.x info.json with features and data_path ({e})") from None
        version = str(self.info.get("codebase_version", ""))
        if not version.startswith("v2"):
            raise DatasetError(f"{info_path}: codebase_version {version!r}; this reader handles LeRobot v2.x "
                             f"(meta/episodes.jsonl + one parquet file per episode)")
        self.profile = detect_profile(features, info_path)
        self.columns = PROFILES[self.profile]
        self.keys = tuple(self.columns)
        for key, dim in (("state", (7, 8) if self.profile == "bridge" else (8,)), ("actions", (7,))):
            shape = tuple(features[self.columns[key]].get("shape", ()))
            if shape not in [(d,) for d in dim]:
                raise DatasetError(f"{info_path}: feature {self.columns[key]}: expected shape "
                                 f"{' or '.join(f'[{d}]' for d in dim)}, found {list(shape)}")
        img = features[self.columns["agentview_rgb"]]
        shape = img.get("shape", [0, 0, 3])
        size = int(shape[0] if shape[-1] == 3 else shape[1])
        tasks = {t["task"]: t["task_index"] for t in _jsonl(os.path.join(root, "meta", "tasks.jsonl"))}
        self.episodes, skipped = [], 0
        for e in _jsonl(os.path.join(root, "meta", "episodes.jsonl")):
            try:
                ep, length = int(e["episode_index"]), int(e["length"])
                language = str((e.get("tasks") or [""])[0]).strip()
            except (KeyError, ValueError, TypeError):
                raise DatasetError(f"{root}/meta/episodes.jsonl: each line needs episode_index, tasks and length") from None
            if not language:
                skipped += 1
                continue
            if language not in tasks:
                raise DatasetError(f"{root}/meta/episodes.jsonl: episode {ep}'s task {language!r} is not in meta/tasks.jsonl")
            self.episodes.append({"index": len(self.episodes), "episode_index": ep, "suite": os.path.basename(os.path.abspath(root)),
                                  "task_id": int(tasks[language]), "task": language, "language": language, "length": length})
        if skipped:
            print(f"note: {root}: skipped {skipped} episodes without a language instruction")
        if not self.episodes:
            raise DatasetError(f"{root}/meta/episodes.jsonl: no episodes")
        for rec in self.episodes:
            path = self._where(rec["index"])
            if not os.path.isfile(path):
                raise DatasetError(f"{path}: missing (episode {rec['episode_index']} of meta/episodes.jsonl)")
        split_by_task(self.episodes)
        used = sorted({(e["task_id"], e["language"]) for e in self.episodes})
        self.meta = {"format": FORMAT, "profile": self.profile, "image_size": size,
                     "control_hz": 20 if self.profile.startswith("libero") else self.info.get("fps"),
                     "image_convention": "upright as stored (LeRobot LIBERO is pre-rotated 180 degrees; Bridge is upright)",
                     "tasks": [{"suite": self.episodes[0]["suite"], "task_id": t, "name": l, "language": l} for t, l in used],
                     "columns": self.columns}
        if drop_noops:
            self.drop_noop_steps()

    def _where(self, i: int) -> str:
        ep = self.episodes[i]["episode_index"]
        rel = self.data_path.format(episode_chunk=ep // int(self.info.get("chunks_size", 1000)), episode_index=ep)
        return os.path.join(self.root, rel)

    def _read(self, i: int, keys: list) -> dict:
        rec, path = self.episodes[i], self._where(i)
        cols = [self.columns[k] for k in keys]
        try:
            table = _pq().read_table(path, columns=[c for c in cols if self.info["features"][c]["dtype"] != "video"])
        except Exception as e:  # pyarrow raises its own error types for missing columns and damaged files
            raise DatasetError(f"{path}: cannot read columns {', '.join(cols)} ({str(e).splitlines()[0]})") from None
        if table.num_rows != rec["length"]:
            raise DatasetError(f"{path}: {table.num_rows} rows, but meta/episodes.jsonl says length {rec['length']} "
                             f"(truncated episode?)")
        out = {}
        for key, col in zip(keys, cols):
            if self.info["features"][col]["dtype"] == "video":
                out[key] = self._video(rec, col, path)
            elif key in ("agentview_rgb", "eye_in_hand_rgb"):
                out[key] = self._images(table.column(col).to_pylist(), path, col)
            else:
                out[key] = self._vectors(table.column(col).to_pylist(), path, col, key)
        return out

    def _vectors(self, rows, path, col, key) -> np.ndarray:
        try:
            x = np.asarray(rows, dtype=np.float32)
        except (ValueError, TypeError):
            x = np.zeros(0)
        want = (7, 8) if key == "state" and self.profile == "bridge" else ((8,) if key == "state" else (7,))
        if x.ndim != 2 or x.shape[1] not in want:
            raise DatasetError(f"{path}: column {col}: expected [T, {' or '.join(map(str, want))}] numbers, "
                             f"found shape {x.shape}")
        if self.profile == "bridge" and key == "state" and x.shape[1] == 7:     # xyz rpy gripper -> xyz rpy pad gripper
            x = np.concatenate([x[:, :6], np.zeros((len(x), 1), np.float32), x[:, 6:]], 1)
        if self.profile == "bridge" and key == "actions":                      # 1 open / 0 closed -> -1 open / +1 closed
            x = x.copy()
            x[:, 6] = 1.0 - 2.0 * x[:, 6]
        return x

    @staticmethod
    def _images(rows, path, col) -> np.ndarray:
        from PIL import Image
        frames = []
        for t, r in enumerate(rows):
            data = r.get("bytes") if isinstance(r, dict) else None
            try:
                frames.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
            except Exception:
                raise DatasetError(f"{path}: column {col}, row {t}: expected an encoded image {{bytes, path}}") from None
        if len({f.shape for f in frames}) > 1:
            raise DatasetError(f"{path}: column {col}: frames of different sizes")
        return np.stack(frames)

    def _video(self, rec, col, path) -> np.ndarray:
        """Frames of an MP4 feature (LeRobot's videos/chunk-XXX/<key>/episode_XXXXXX.mp4), first `length` frames."""
        av = require("av", f"{col} is stored as video; decoding it")
        ep = rec["episode_index"]
        vpath = os.path.join(self.root, self.info["video_path"].format(
            episode_chunk=ep // int(self.info.get("chunks_size", 1000)), video_key=col, episode_index=ep))
        try:
            with av.open(vpath) as c:
                frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        except Exception as e:
            raise DatasetError(f"{vpath}: unreadable video ({str(e).splitlines()[0]})") from None
        if len(frames) < rec["length"]:
            raise DatasetError(f"{vpath}: {len(frames)} frames for an episode of {rec['length']} steps (truncated video?)")
        return np.stack(frames[: rec["length"]])
