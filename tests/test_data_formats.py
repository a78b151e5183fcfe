"""Real-dataset readers (data/libero_hdf5.py, data/lerobot.py, data.demos.open_dataset): small fixtures written
here in each exact on-disk format (real key names, dtypes and image orientation), then episode records,
language, orientation, shapes and values, chunking at episode ends, statistics and their cache, no-op
filtering, one-line errors on damaged files, and every stage's smallest run on each fixture."""
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ENV, ROOT, run
from data.demos import chunk_episode, noop_mask, open_dataset, require
from data.episodes import DatasetError

h5py = pytest.importorskip("h5py")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

NOOPS = 3                                  # every fixture episode starts with this many no-op steps, as LIBERO demos do
LIBERO_TASKS = {"libero_spatial": ["pick_up_the_black_bowl_next_to_the_plate_and_place_it_on_the_plate",
                                   "pick_up_the_black_bowl_on_the_stove_and_place_it_on_the_plate"],
                "libero_goal": ["open_the_middle_drawer_of_the_cabinet"]}


def language(task: str) -> str:
    return task.replace("_", " ")


def upright_frames(T: int, size: int, seed: int) -> np.ndarray:
    """uint8 [T, size, size, 3], smooth (compresses well), with a red top-left and a blue bottom-right corner in
    the upright view: the orientation marker the tests check."""
    rng = np.random.default_rng(seed)
    base = np.linspace(40, 200, size, dtype=np.float32)
    img = np.empty((T, size, size, 3), np.uint8)
    for t in range(T):
        img[t] = np.stack([np.add.outer(base, base) / 2 * (0.5 + 0.5 * rng.random())] * 3, -1).astype(np.uint8)
    q = size // 4
    img[:, :q, :q] = [255, 0, 0]
    img[:, -q:, -q:] = [0, 0, 255]
    return img


def episode(T: int, seed: int) -> dict:
    """Actions in LIBERO units (Δ in ±1, gripper ±1) starting with NOOPS no-op steps; 8-D proprio."""
    rng = np.random.default_rng(seed)
    a = np.clip(np.cumsum(rng.normal(0, 0.15, (T, 7)), 0), -1, 1).astype(np.float32)
    a[:, 6] = np.where(np.arange(T) < T // 2, -1.0, 1.0)
    a[:NOOPS, :6], a[:NOOPS, 6] = 0.0, -1.0
    ee = np.cumsum(rng.normal(0, 0.01, (T, 6)), 0) + [0.0, 0.1, 1.0, 3.1, 0.0, 0.0]
    grip = np.stack([0.04 - 0.03 * (a[:, 6] > 0), -0.04 + 0.03 * (a[:, 6] > 0)], 1)
    return {"actions": a, "ee_states": ee, "gripper_states": grip}


def write_libero_hdf5(root, T=24, demos=3, size=128, seed=0):
    """LIBERO's layout: <suite>/<TASK>_demo.hdf5 with data/demo_i/{actions, obs/...}; images stored upside down."""
    truth, n = [], 0
    for suite, tasks in LIBERO_TASKS.items():
        os.makedirs(os.path.join(root, suite), exist_ok=True)
        for task in tasks:
            with h5py.File(os.path.join(root, suite, f"{task}_demo.hdf5"), "w") as f:
                data = f.create_group("data")
                data.attrs["problem_info"] = json.dumps({"problem_name": "libero_tabletop_manipulation",
                                                         "domain_name": "robosuite", "language_instruction": language(task)})
                data.attrs["macros_image_convention"] = "opengl"
                data.attrs["env_name"] = "Libero_Tabletop_Manipulation"
                data.attrs["num_demos"], data.attrs["total"] = demos, demos * T
                for d in range(demos):
                    L = T + d                                      # distinct lengths: order and counts are checkable
                    ep, up = episode(L, seed + n), upright_frames(L, size, seed + n)
                    wrist = upright_frames(L, size, seed + 100 + n)[:, ::-1]
                    g = data.create_group(f"demo_{d}")
                    g.attrs["num_samples"] = L
                    g.create_dataset("actions", data=ep["actions"].astype(np.float64))
                    g.create_dataset("states", data=np.zeros((L, 79)))
                    g.create_dataset("robot_states", data=np.zeros((L, 9)))
                    g.create_dataset("rewards", data=(np.arange(L) == L - 1).astype(np.uint8))
                    g.create_dataset("dones", data=(np.arange(L) == L - 1).astype(np.uint8))
                    o = g.create_group("obs")
                    o.create_dataset("agentview_rgb", data=up[:, ::-1, ::-1], compression="gzip")   # OpenGL: upside down
                    o.create_dataset("eye_in_hand_rgb", data=wrist[:, ::-1, ::-1], compression="gzip")
                    o.create_dataset("ee_states", data=ep["ee_states"])
                    o.create_dataset("ee_pos", data=ep["ee_states"][:, :3])
                    o.create_dataset("ee_ori", data=ep["ee_states"][:, 3:])
                    o.create_dataset("gripper_states", data=ep["gripper_states"])
                    o.create_dataset("joint_states", data=np.zeros((L, 7)))
                    truth.append({"language": language(task), "suite": suite, **ep, "agentview": up, "wrist": wrist})
                    n += 1
    return truth


def png(img: np.ndarray) -> dict:
    from PIL import Image
    b = io.BytesIO()
    Image.fromarray(img).save(b, format="PNG")
    return {"bytes": b.getvalue(), "path": None}


def write_lerobot(root, profile="libero", T=20, per_task=3, size=256, seed=0, state_dim=8):
    """LeRobot v2.0: meta/{info.json, episodes.jsonl, tasks.jsonl}, data/chunk-000/episode_XXXXXX.parquet with
    images as {bytes: PNG, path} structs. profile libero = physical-intelligence/libero (openpi's columns,
    frames pre-rotated, i.e. upright); bridge = IPEC-COMMUNITY/bridge_orig_lerobot's columns (gripper 1 = open),
    plus one episode with an empty instruction, which the reader skips."""
    cols = {"libero": ("image", "wrist_image", "state", "actions"),
            "bridge": ("observation.images.image_0", None, "observation.state", "action")}[profile]
    img_col, wrist_col, state_col, act_col = cols
    tasks = [language(t) for ts in LIBERO_TASKS.values() for t in ts][:2]
    if profile == "bridge":
        tasks = ["put the carrot on the plate", "open the drawer", ""]
    img_feat = {"dtype": "image", "shape": [size, size, 3], "names": ["height", "width", "channel"]}
    features = {img_col: img_feat, state_col: {"dtype": "float32", "shape": [state_dim], "names": ["state"]},
                act_col: {"dtype": "float32", "shape": [7], "names": ["actions"]},
                **{k: {"dtype": dt, "shape": [1], "names": None} for k, dt in
                   [("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"), ("index", "int64"),
                    ("task_index", "int64")]}}
    if wrist_col:
        features[wrist_col] = img_feat
    os.makedirs(os.path.join(root, "meta"))
    os.makedirs(os.path.join(root, "data", "chunk-000"))
    truth, eps, index = [], [], 0
    for e in range(len(tasks) * per_task if profile == "libero" else 2 * per_task + 1):
        ti = e % len(tasks) if profile == "libero" else (2 if e == 2 * per_task else e % 2)
        L = T + e
        ep, up = episode(L, seed + e), upright_frames(L, size, seed + e)
        acts = ep["actions"].copy()
        if profile == "bridge":
            acts[:, :6] *= 0.02                                       # metres / radians per 5 Hz step
            acts[:, 6] = (acts[:, 6] < 0).astype(np.float32)          # 1 = open, 0 = closed
        state = np.concatenate([ep["ee_states"], ep["gripper_states"]], 1).astype(np.float32)[:, :state_dim]
        table = {img_col: [png(x) for x in up], state_col: state.tolist(), act_col: acts.tolist(),
                 "timestamp": (np.arange(L) / 10).astype(np.float32), "frame_index": np.arange(L),
                 "episode_index": np.full(L, e), "index": index + np.arange(L), "task_index": np.full(L, ti)}
        if wrist_col:
            table[wrist_col] = [png(x) for x in upright_frames(L, size, seed + 100 + e)]
        pq.write_table(pa.table(table), os.path.join(root, "data", "chunk-000", f"episode_{e:06d}.parquet"))
        eps.append({"episode_index": e, "tasks": [tasks[ti]], "length": L})
        truth.append({"language": tasks[ti], **ep, "actions_stored": acts, "state": state, "agentview": up})
        index += L
    info = {"codebase_version": "v2.0", "robot_type": "panda" if profile == "libero" else "widowx",
            "total_episodes": len(eps), "total_frames": index, "total_tasks": len(tasks), "total_videos": 0,
            "total_chunks": 1, "chunks_size": 1000, "fps": 10 if profile == "libero" else 5,
            "splits": {"train": f"0:{len(eps)}"},
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": None, "features": features}
    with open(os.path.join(root, "meta", "info.json"), "w") as f:
        json.dump(info, f, indent=1)
    with open(os.path.join(root, "meta", "episodes.jsonl"), "w") as f:
        f.writelines(json.dumps(x) + "\n" for x in eps)
    with open(os.path.join(root, "meta", "tasks.jsonl"), "w") as f:
        f.writelines(json.dumps({"task_index": i, "task": t}) + "\n" for i, t in enumerate(tasks))
    return truth


@pytest.fixture(scope="module")
def libero_h5(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("libero_hdf5") / "LIBERO-datasets")
    return root, write_libero_hdf5(root)


@pytest.fixture(scope="module")
def lerobot_libero(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("lerobot") / "libero")
    return root, write_lerobot(root, "libero")


@pytest.fixture(scope="module")
def lerobot_bridge(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("bridge") / "bridge_orig_lerobot")
    return root, write_lerobot(root, "bridge", size=64)


def marker_upright(img: np.ndarray) -> bool:
    q = img.shape[0] // 4
    return (img[:q, :q] == [255, 0, 0]).all() and (img[-q:, -q:] == [0, 0, 255]).all()


# ----------------------------------------------------------------------------- LIBERO HDF5
def test_libero_hdf5_episodes_language_orientation_and_values(libero_h5):
    root, truth = libero_h5
    ds = open_dataset(root)
    assert type(ds).__name__ == "LiberoHDF5Dataset" and not ds.privileged
    assert len(ds) == 9 and ds.meta["image_size"] == 128 and len(ds.meta["tasks"]) == 3
    # files in sorted order (libero_goal before libero_spatial), demos in numeric order
    want = sorted(truth, key=lambda x: (x["suite"], x["language"]))
    assert [e["language"] for e in ds.episodes] == [w["language"] for w in want]
    assert [e["length"] for e in ds.episodes] == [len(w["actions"]) for w in want]
    assert [e["split"] for e in ds.episodes[:3]] == ["train", "train", "val"]       # last of each small task held out
    assert {e["suite"] for e in ds.episodes} == {"libero_spatial", "libero_goal"}
    for i in (0, 4):
        ep, w = ds.load(i), want[i]
        T = len(w["actions"])
        assert ep["agentview_rgb"].shape == (T, 128, 128, 3) and ep["agentview_rgb"].dtype == np.uint8
        assert marker_upright(ep["agentview_rgb"][0]) and np.array_equal(ep["agentview_rgb"], w["agentview"])
        assert np.array_equal(ep["eye_in_hand_rgb"], w["wrist"])
        assert ep["state"].shape == (T, 8) and ep["state"].dtype == np.float32
        np.testing.assert_allclose(ep["state"], np.concatenate([w["ee_states"], w["gripper_states"]], 1), rtol=1e-6)
        assert ep["actions"].dtype == np.float32 and np.array_equal(ep["actions"], w["actions"])
    with pytest.raises(DatasetError, match="sim_state"):
        ds.load(0, ["sim_state"])


def test_libero_hdf5_sorts_demos_numerically(tmp_path):
    with h5py.File(tmp_path / "T_demo.hdf5", "w") as f:
        d = f.create_group("data")
        d.attrs["problem_info"] = json.dumps({"language_instruction": "do it"})
        for k, L in (("demo_10", 7), ("demo_2", 5), ("demo_1", 4)):
            ep = episode(L, L)
            g = d.create_group(k)
            g["actions"], g["obs/ee_states"], g["obs/gripper_states"] = ep["actions"], ep["ee_states"], ep["gripper_states"]
            g["obs/agentview_rgb"] = g["obs/eye_in_hand_rgb"] = np.zeros((L, 8, 8, 3), np.uint8)
    ds = open_dataset(str(tmp_path / "T_demo.hdf5"))
    assert [e["demo"] for e in ds.episodes] == ["demo_1", "demo_2", "demo_10"] and ds.episodes[0]["task"] == "T"


# ----------------------------------------------------------------------------- LeRobot
def test_lerobot_libero_episodes_language_orientation_and_values(lerobot_libero):
    root, truth = lerobot_libero
    ds = open_dataset(root)
    assert type(ds).__name__ == "LeRobotDataset" and ds.meta["profile"] == "libero" and ds.meta["image_size"] == 256
    assert len(ds) == 6 and [e["language"] for e in ds.episodes] == [w["language"] for w in truth]
    assert [e["task_id"] for e in ds.episodes] == [0, 1] * 3
    assert [e["split"] for e in ds.episodes if e["task_id"] == 0] == ["train", "train", "val"]
    ep, w = ds.load(1), truth[1]
    T = len(w["actions"])
    assert ep["agentview_rgb"].shape == (T, 256, 256, 3) and marker_upright(ep["agentview_rgb"][0])
    assert np.array_equal(ep["agentview_rgb"], w["agentview"])              # stored pre-rotated: not flipped again
    assert ep["eye_in_hand_rgb"].shape == (T, 256, 256, 3)
    assert np.array_equal(ep["state"], w["state"]) and np.array_equal(ep["actions"], w["actions"])


def test_lerobot_bridge_columns_gripper_and_empty_language(lerobot_bridge, tmp_path, capsys):
    root, truth = lerobot_bridge
    ds = open_dataset(root, "lerobot")
    assert ds.meta["profile"] == "bridge" and ds.meta["control_hz"] == 5
    assert len(ds) == 6 and "" not in {e["language"] for e in ds.episodes}              # the empty one is skipped
    ep, w = ds.load(0), truth[0]
    assert marker_upright(ep["agentview_rgb"][0]) and ep["state"].shape == (len(w["actions"]), 8)
    np.testing.assert_allclose(ep["actions"][:, :6], w["actions_stored"][:, :6])
    assert np.array_equal(ep["actions"][:, 6], w["actions"][:, 6])        # 1 open / 0 closed → −1 open / +1 closed
    with pytest.raises(DatasetError, match="eye_in_hand_rgb"):
        ds.load(0, ["eye_in_hand_rgb"])
    # the 7-D state of Bridge's RLDS layout (xyz, rpy, gripper) gets the LeRobot conversion's pad before the gripper
    r7 = str(tmp_path / "b7")
    t7 = write_lerobot(r7, "bridge", T=6, per_task=1, size=16, state_dim=7)
    s = open_dataset(r7).load(0, ["state"])["state"]
    assert s.shape == (6, 8) and np.all(s[:, 6] == 0) and np.array_equal(s[:, 7], t7[0]["state"][:, 6])


# ----------------------------------------------------------------------------- shared behaviour
def test_chunks_stop_at_episode_ends(libero_h5):
    ds = open_dataset(libero_h5[0])
    H = 8
    chunks = ds.action_chunks(H, split=None)
    assert chunks.shape == (sum(e["length"] for e in ds.episodes), H, 7)
    a0 = ds.actions(0)
    last = chunks[len(a0) - 1]                       # the last chunk of episode 0 holds, never runs into episode 1
    assert np.array_equal(last[0], a0[-1]) and np.all(last[1:, :6] == 0) and np.all(last[1:, 6] == a0[-1, 6])
    assert np.array_equal(chunks[len(a0)], chunk_episode(ds.actions(1), H)[0])
    assert len(ds.action_chunks(H, split="val")) == sum(e["length"] for e in ds.episodes if e["split"] == "val")


def test_statistics_match_the_data_and_are_cached(lerobot_libero, monkeypatch, tmp_path):
    root, truth = lerobot_libero
    for f in os.listdir(root):
        if f.startswith("nanoroboalign-stats"):
            os.remove(os.path.join(root, f))
    ds = open_dataset(root)
    st = ds.stats
    acts = np.concatenate([w["actions"] for w in truth])
    np.testing.assert_allclose(st["actions"]["q01"], np.percentile(acts, 1, axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(st["actions"]["q99"], np.percentile(acts, 99, axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(st["state"]["mean"], np.concatenate([w["state"] for w in truth]).mean(0), rtol=1e-5)
    assert st["n_steps"] == len(acts) and os.path.isfile(os.path.join(root, "nanoroboalign-stats.json"))
    ds2 = open_dataset(root)                         # a second open reads the cache: no episode is read
    monkeypatch.setattr(type(ds2), "_read", lambda *a: (_ for _ in ()).throw(AssertionError("episode read")))
    assert ds2.stats["actions"] == st["actions"]
    monkeypatch.undo()
    # a read-only dataset folder caches under $NANOROBOALIGN_CACHE instead
    monkeypatch.setenv("NANOROBOALIGN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(os, "access", lambda p, mode: False)
    assert ds.stats_path().startswith(str(tmp_path / "cache"))


def test_stats_recomputed_when_the_data_changes(tmp_path):
    root = str(tmp_path / "d")
    write_libero_hdf5(root, T=10, demos=2, size=16)
    before = open_dataset(root).stats["n_steps"]
    f = os.path.join(root, "libero_goal", "open_the_middle_drawer_of_the_cabinet_demo.hdf5")
    with h5py.File(f, "a") as h:
        del h["data/demo_1"]
    assert open_dataset(root).stats["n_steps"] == before - 11


def test_drop_noops_as_openvla(libero_h5):
    a = np.zeros((5, 7), np.float32)
    a[:, 6] = [-1, -1, 1, 1, 1]
    a[3, 0] = 0.5
    assert noop_mask(a).tolist() == [True, True, False, False, True]   # gripper change and motion are kept
    full, ds = open_dataset(libero_h5[0]), open_dataset(libero_h5[0], drop_noops=True)
    assert [e["length"] for e in ds.episodes] == [e["length"] - NOOPS for e in full.episodes]
    ep, ref = ds.load(2), full.load(2)
    assert np.array_equal(ep["actions"], ref["actions"][NOOPS:]) and np.array_equal(ep["agentview_rgb"], ref["agentview_rgb"][NOOPS:])
    assert ds.stats_path().endswith("-noops.json") and ds.stats["n_steps"] == full.stats["n_steps"] - NOOPS * len(ds)


def test_format_detection_and_override(libero_h5, lerobot_libero, demos_dir, tmp_path):
    assert type(open_dataset(demos_dir)).__name__ == "DemoDataset" and open_dataset(demos_dir).privileged
    with pytest.raises(DatasetError, match="meta.json"):
        open_dataset(libero_h5[0], "mini")
    with pytest.raises(DatasetError, match="data-format"):
        open_dataset(libero_h5[0], "rlds")
    with pytest.raises(DatasetError, match="no such dataset"):
        open_dataset(str(tmp_path / "missing"))
    (tmp_path / "x").mkdir()
    with pytest.raises(DatasetError, match="unknown dataset format"):
        open_dataset(str(tmp_path / "x"))


def test_missing_optional_dependency_names_the_install_command():
    with pytest.raises(DatasetError, match="pip install -r requirements-data.txt"):
        require("surely_not_installed_pkg", "reading X")


# ----------------------------------------------------------------------------- damaged files: one-line errors
def _damaged_h5(tmp_path, edit):
    root = str(tmp_path / "bad")
    write_libero_hdf5(root, T=6, demos=2, size=16)
    path = os.path.join(root, "libero_goal", "open_the_middle_drawer_of_the_cabinet_demo.hdf5")
    with h5py.File(path, "a") as f:
        edit(f["data/demo_1"])
    return root, path


@pytest.mark.parametrize("edit, match", [
    (lambda g: g.__delitem__("obs/ee_states"), "data/demo_1/obs/ee_states is missing"),
    (lambda g: (g.__delitem__("obs/agentview_rgb"), g.create_dataset("obs/agentview_rgb", data=np.zeros((3, 16, 16, 3), np.uint8))),
     r"data/demo_1/obs/agentview_rgb: expected uint8 \(7, H, W, 3\)"),                # truncated images
    (lambda g: (g.__delitem__("obs/gripper_states"), g.create_dataset("obs/gripper_states", data=np.zeros((7, 3)))),
     r"data/demo_1/obs/gripper_states: expected shape \(7, 2\)"),
])
def test_damaged_hdf5_is_a_one_line_error(tmp_path, edit, match):
    root, path = _damaged_h5(tmp_path, edit)
    with pytest.raises(DatasetError, match=match) as e:
        open_dataset(root)
    assert path in str(e.value) and "\n" not in str(e.value)


def test_truncated_hdf5_file_exits_from_a_stage(tmp_path):
    root, path = _damaged_h5(tmp_path, lambda g: None)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 3)
    p = subprocess.run([sys.executable, "fast_tokenizer.py", "--data", root, "--out", str(tmp_path / "f")],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1 and path in p.stderr, p.stderr
    assert p.stderr.startswith("fast_tokenizer.py: "), p.stderr


def _damaged_lerobot(tmp_path, edit_table=None, edit_info=None):
    root = str(tmp_path / "bad")
    write_lerobot(root, "libero", T=5, per_task=2, size=16)
    path = os.path.join(root, "data", "chunk-000", "episode_000001.parquet")
    if edit_table:
        pq.write_table(edit_table(pq.read_table(path)), path)
    if edit_info:
        with open(os.path.join(root, "meta", "info.json")) as f:
            info = json.load(f)
        edit_info(info)
        with open(os.path.join(root, "meta", "info.json"), "w") as f:
            json.dump(info, f)
    return root, path


@pytest.mark.parametrize("kw, match", [
    (dict(edit_table=lambda t: t.drop_columns(["state"])), "state"),                               # missing column
    (dict(edit_table=lambda t: t.slice(0, 3)), "3 rows, but meta/episodes.jsonl says length 6"),  # truncated episode
    (dict(edit_table=lambda t: t.set_column(t.schema.get_field_index("actions"), "actions",
                                            pa.array([[0.0] * 6] * t.num_rows))), r"column actions: expected \[T, 7\]"),
])
def test_damaged_parquet_is_a_one_line_error(tmp_path, kw, match):
    root, path = _damaged_lerobot(tmp_path, **kw)
    ds = open_dataset(root)
    with pytest.raises(DatasetError, match=match) as e:
        ds.load(1)
    assert path in str(e.value) and "\n" not in str(e.value)


def test_bad_lerobot_metadata_is_a_one_line_error(tmp_path):
    root, _ = _damaged_lerobot(tmp_path, edit_info=lambda i: i["features"]["state"].update(shape=[6]))
    with pytest.raises(DatasetError, match=r"feature state: expected shape \[8\], found \[6\]"):
        open_dataset(root)
    root2, path = _damaged_lerobot(tmp_path / "2")
    os.remove(path)
    with pytest.raises(DatasetError, match="episode_000001.parquet: missing"):
        open_dataset(root2)
    with open(os.path.join(root2, "meta", "info.json"), "w") as f:
        f.write('{"codebase_version": "v3.0", "features": {}, "data_path": "x"}')
    with pytest.raises(DatasetError, match="v3.0"):
        open_dataset(root2)


# ----------------------------------------------------------------------------- every stage on every fixture
@pytest.mark.parametrize("name", ["libero_h5", "lerobot_libero", "lerobot_bridge"])
def test_every_stage_runs_on_the_fixture(name, request, tmp_path):
    root, _ = request.getfixturevalue(name)
    fast, sft_dir, grpo_dir, vla = (str(tmp_path / d) for d in ("fast", "sft", "grpo", "vla"))
    horizon = "5" if name == "lerobot_bridge" else "10"               # one second: 5 steps at 5 Hz, 10 as openpi at 20 Hz
    run("fast_tokenizer.py", "--data", root, "--out", fast, "--vocab-size", "300", "--horizon", horizon)
    p = run("sft.py", "--model", "tiny", "--data", root, "--fast", fast, "--out", sft_dir, "--steps", "2",
            "--global-batch", "8", "--micro-batch", "4", "--eval-prompts", "4", "--max-new-tokens", "8",
            "--stage2-frac", "0.3", "--eval-kinds", "reason,vqa")
    assert "skipping caption, vqa" in p.stdout
    stage2 = json.load(open(os.path.join(sft_dir, "stage2.json")))
    assert stage2["data"] == os.path.abspath(root) and stage2["episodes"]
    run("grpo.py", "--init", sft_dir, "--out", grpo_dir, "--steps", "1", "--rollout-batch", "2", "--update-batch", "2",
        "--group", "2", "--max-new-tokens", "8", "--eval-prompts", "2")
    assert os.path.isfile(os.path.join(grpo_dir, "metrics.json"))
    run("vla_train.py", "--backbone", sft_dir, "--data", root, "--out", vla, "--steps", "3", "--frame-stride", "10",
        "--val-every", "0", "--d-model", "32", "--n-layers", "1", "--horizon", horizon,
        *(["--wrist"] if name != "lerobot_bridge" else []))
    vcfg = json.load(open(os.path.join(vla, "vla_config.json")))
    assert vcfg["image_size"] == open_dataset(root).meta["image_size"]


def test_lerobot_video_frames_are_decoded(lerobot_bridge, tmp_path):
    """IPEC's Bridge conversion stores image_0 as MP4 (dtype video, LeRobot's video_path template)."""
    av = pytest.importorskip("av")
    root = str(tmp_path / "bridge_video")
    shutil.copytree(lerobot_bridge[0], root, ignore=shutil.ignore_patterns("nanoroboalign-stats*"))
    info = json.load(open(os.path.join(root, "meta", "info.json")))
    col = "observation.images.image_0"
    info["features"][col]["dtype"] = "video"
    info["video_path"] = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
    json.dump(info, open(os.path.join(root, "meta", "info.json"), "w"))
    ref = open_dataset(lerobot_bridge[0]).load(0, ["agentview_rgb"])["agentview_rgb"]
    for e in range(info["total_episodes"]):
        path = os.path.join(root, "data", "chunk-000", f"episode_{e:06d}.parquet")
        table = pq.read_table(path)
        from PIL import Image
        frames = [np.asarray(Image.open(io.BytesIO(r["bytes"]))) for r in table.column(col).to_pylist()]
        pq.write_table(table.drop_columns([col]), path)
        vpath = os.path.join(root, info["video_path"].format(episode_chunk=0, video_key=col, episode_index=e))
        os.makedirs(os.path.dirname(vpath), exist_ok=True)
        with av.open(vpath, "w") as c:
            s = c.add_stream("libx264", rate=5)
            s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
            for f in frames:
                c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
            c.mux(s.encode())
    got = open_dataset(root).load(0, ["agentview_rgb", "actions"])["agentview_rgb"]
    assert got.shape == ref.shape and np.abs(got.astype(int) - ref).mean() < 8      # lossy codec
    q = got.shape[1] // 4
    assert got[0, :q, :q, 0].mean() > 200 and got[0, :q, :q, 2].mean() < 60        # red top-left: upright


def test_choice_samples_on_a_real_dataset_and_no_trace(libero_h5):
    """A dataset without world state still gives the language target (signs scaled by its own action sizes);
    the visual target needs the gripper's place in the image and says so in one line."""
    import samples as sm
    from fast_tokenizer import FastTokenizer
    ds = open_dataset(libero_h5[0])
    fast = FastTokenizer.fit(ds.action_chunks(5), vocab_size=256)
    s = sm.build_samples(ds, ds.indices()[:2], fast, {"choice": 1.0}, 0)
    assert s and all(sm.target_reward("choice", x.answer, x.target) == 1.0 for x in s)
    with pytest.raises(DatasetError, match="trace samples need"):
        sm.build_samples(ds, ds.indices()[:1], fast, {"trace": 1.0}, 0)
