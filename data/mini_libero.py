"""mini-LIBERO: a small, fast, deterministic LIBERO-shaped world (numpy physics, pillow rendering).

Same shape as LIBERO, so switching to the real simulator changes a flag, not the code:
  * suites spatial / object / goal / long (= libero_10), 10 tasks each, LIBERO-style instructions;
  * 50 fixed initial states per task: `get_benchmark("libero_spatial").get_task_init_states(i)` → (50, S);
  * `OffScreenRenderEnv`: reset(), seed(), set_init_state(state) -> obs, step(action) -> (obs, reward, done,
    info) with done = success, check_success(); 7-D OSC_POSE delta actions in [-1, 1] at 20 Hz;
  * observation keys `agentview_image`, `robot0_eye_in_hand_image` (uint8 H×W×3), `robot0_eef_pos`,
    `robot0_eef_quat` (xyzw), `robot0_gripper_qpos` (2), plus `<body>_pos` for every body (privileged).

Image convention (the same pitfall as LIBERO, on purpose): the env returns frames **upside down**, as
robosuite's OpenGL renderer does. Everything the project stores or feeds a policy is **upright** (rotated
180°, `flip_image`), which is what OpenVLA/openpi's LIBERO datasets hold; eval_libero.py flips frames from
both backends the same way.

Command line:
    python -m data.mini_libero demos --out out/demos          # generate the default demonstration set
    python -m data.mini_libero expert --trials 50             # expert success per task on all init states
    python -m data.mini_libero video --suite goal --task 7    # GIF of one expert episode
    python -m data.mini_libero stats --data out/demos         # dataset statistics (any format)
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import asdict
from multiprocessing import get_context

import numpy as np
from PIL import Image, ImageDraw

from config import exits_on_bad_files, write_json, write_jsonl
from data.demos import DEMO_INIT_OFFSET, FORMAT, open_dataset
from data.episodes import describe, is_val
from data.expert import Expert
from data.render import Renderer
from data.scenes import DEFAULT_LAYOUT, LAYOUTS, MAX_STEPS, N_INIT_STATES, SUITES, Task, layout_scale, suite_tasks
from data.world import quat_to_axisangle

SUITE_ALIASES = {"libero_spatial": "spatial", "libero_object": "object", "libero_goal": "goal",
                 "libero_10": "long", "libero_long": "long"}


def suite_name(name: str) -> str:
    s = SUITE_ALIASES.get(name, name)
    if s not in SUITES:
        raise ValueError(f"unknown suite {name!r}: expected one of {', '.join(SUITES)} (or libero_<suite>)")
    return s


def flip_image(img: np.ndarray) -> np.ndarray:
    """Rotate 180° (both axes): the raw OpenGL-convention frame ↔ the upright frame datasets store. A 180° turn
    reverses the pixel order, so a contiguous frame is copied as one reversed run of pixel-sized records (~2x faster
    than numpy's strided copy of 3-byte pixels; it runs for every camera at every step)."""
    img = np.asarray(img)
    if not img.flags.c_contiguous:
        return np.ascontiguousarray(img[::-1, ::-1])
    pixels = img.reshape(img.shape[0] * img.shape[1], -1)
    pixels = pixels.view(np.dtype((np.void, pixels.shape[1] * img.itemsize)))       # [H*W, 1] records
    return pixels[::-1].copy().view(img.dtype).reshape(img.shape)


# ----------------------------------------------------------------------------- benchmark access, LIBERO-style
class Benchmark:
    def __init__(self, suite: str, layout: str = DEFAULT_LAYOUT):
        self.name, self.layout = suite_name(suite), layout
        self.tasks: list[Task] = suite_tasks(self.name, layout)
        self.n_tasks = len(self.tasks)
        self.max_steps = MAX_STEPS[self.name]
        self._init_cache: dict[int, np.ndarray] = {}

    def get_task(self, i: int) -> Task:
        return self.tasks[i]

    def get_task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def get_task_init_states(self, i: int) -> np.ndarray:
        """(50, S) float64: the fixed initial states of task i, one flat world state per row."""
        if i not in self._init_cache:
            self._init_cache[i] = np.stack([self.tasks[i].scene(k)[0].get_state() for k in range(N_INIT_STATES)])
        return self._init_cache[i]


def get_benchmark(suite: str, layout: str = DEFAULT_LAYOUT) -> Benchmark:
    return Benchmark(suite, layout)


def get_benchmark_dict(layout: str = DEFAULT_LAYOUT) -> dict:
    return {f"libero_{s}" if s != "long" else "libero_10": (lambda s=s: Benchmark(s, layout)) for s in SUITES}


# ----------------------------------------------------------------------------- the environment
class OffScreenRenderEnv:
    """One task's environment. Like LIBERO: build it, reset(), set_init_state(init_states[k]), step()."""

    def __init__(self, task: Task, camera_heights: int = 128, camera_widths: int = 128, render: bool = True,
                 camera_names=("agentview", "robot0_eye_in_hand")):
        if camera_heights != camera_widths:
            raise ValueError("mini-LIBERO renders square images: camera_heights must equal camera_widths")
        if not set(camera_names) <= {"agentview", "robot0_eye_in_hand"} or "agentview" not in camera_names:
            raise ValueError(f"camera_names {camera_names}: expected agentview, optionally robot0_eye_in_hand")
        self.task, self.size, self.do_render = task, camera_heights, render
        self.wrist = "robot0_eye_in_hand" in camera_names       # LIBERO's camera names; each camera costs a render
        self.world, self.plan = task.scene(0)
        self.renderer = Renderer(self.world, self.size) if render else None
        self._seed = 0

    def seed(self, seed: int) -> None:
        self._seed = int(seed)      # the world is deterministic; kept for API parity with LIBERO

    def reset(self) -> dict:
        self.world.set_state(self.task.scene(0)[0].get_state())
        return self._obs()

    def set_init_state(self, state: np.ndarray) -> dict:
        self.world.set_state(state)
        return self._obs()

    def get_sim_state(self) -> np.ndarray:
        return self.world.get_state()

    def check_success(self) -> bool:
        return bool(self.task.success(self.world))

    def step(self, action) -> tuple[dict, float, bool, dict]:
        self.world.step(action)
        done = self.check_success()
        return self._obs(), float(done), done, {"success": done}

    def close(self) -> None:
        pass

    def _obs(self) -> dict:
        w = self.world
        obs = {"robot0_eef_pos": w.eef_pos.copy(), "robot0_eef_quat": w.eef_quat.copy(),
               "robot0_gripper_qpos": np.array([w.width / 2, -w.width / 2])}
        if self.do_render:
            agent, wrist = self.renderer.render(self.wrist)
            obs["agentview_image"] = flip_image(agent)
            if wrist is not None:
                obs["robot0_eye_in_hand_image"] = flip_image(wrist)
        for i, b in enumerate(w.bodies):
            obs[f"{b.name}_pos"] = w.pos[i].copy()
        return obs


def proprio_from_obs(obs: dict) -> np.ndarray:
    """LIBERO's 8-D proprio from an observation: eef pos + axis-angle(eef quat) + gripper qpos."""
    return np.concatenate([obs["robot0_eef_pos"], quat_to_axisangle(obs["robot0_eef_quat"]),
                           obs["robot0_gripper_qpos"]]).astype(np.float32)


# ----------------------------------------------------------------------------- expert rollouts
def expert_episode(task: Task, k: int, seed: int = 0, render: bool = True, size: int = 128,
                   max_steps: int | None = None, record: bool = True, expert_cls=Expert) -> dict:
    """Run the scripted expert (`expert_cls`: Expert or a subclass) from init state k. Returns the recorded
    episode (upright images)."""
    env = OffScreenRenderEnv(task, size, size, render=render)
    world, plan = task.scene(k)
    obs = env.set_init_state(world.get_state())
    expert = expert_cls(env.world, plan, np.random.default_rng([seed, k, task.task_id, SUITES.index(task.suite)]))
    limit = max_steps or MAX_STEPS[task.suite]
    rec = {k_: [] for k_ in ("agentview_rgb", "eye_in_hand_rgb", "state", "actions", "sim_state", "phase")}
    success = False
    for _ in range(limit):
        action, phase = expert.act(env.world)
        if record:
            if render:
                rec["agentview_rgb"].append(flip_image(obs["agentview_image"]))
                rec["eye_in_hand_rgb"].append(flip_image(obs["robot0_eye_in_hand_image"]))
            rec["state"].append(proprio_from_obs(obs))
            rec["sim_state"].append(env.get_sim_state())
            rec["actions"].append(action.astype(np.float32))
            rec["phase"].append(phase)
        obs, _, done, _ = env.step(action)
        if done:
            success = True
            break
    rec["success"], rec["length"] = success, len(rec["actions"])
    return rec


def expert_success(suites, trials: int, seed: int = 0, layout: str = DEFAULT_LAYOUT) -> dict:
    """{suite: [success rate per task]} for the expert on the first `trials` init states (no rendering)."""
    out = {}
    for s in suites:
        rates = []
        for task in suite_tasks(s, layout):
            ok = sum(expert_episode(task, k, seed, render=False, record=False)["success"] for k in range(trials))
            rates.append(ok / trials)
        out[s] = rates
    return out


# ----------------------------------------------------------------------------- demonstration datasets
def successful_episodes(task, per_task: int, seed: int = 0, first_init: int = DEMO_INIT_OFFSET, **kw):
    """Yield (j, k, episode) for the first `per_task` successful expert episodes of `task`, from scene samples
    first_init, first_init + 1, … (k: the sample used). Failures are skipped: LIBERO's datasets keep successful demos
    only. kw goes to expert_episode (size, render, expert_cls)."""
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
    """Generate the demo dataset (data/demos.py's format) into `out`: built in a temp dir, then renamed, so it is
    never half-written."""
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
    stats = {"n_episodes": len(recs), "n_steps": int(len(acts)), "actions": describe(acts), "state": describe(states)}
    write_json(os.path.join(tmp, "meta.json"), meta)
    write_json(os.path.join(tmp, "stats.json"), stats)
    write_jsonl(os.path.join(tmp, "episodes.jsonl"), recs)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    size_mb = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(out) for f in fs) / 2**20
    print(f"wrote {len(recs)} demos, {len(acts)} steps, {size_mb:.1f} MB to {out} in {time.time() - t0:.1f}s")
    return {"episodes": len(recs), "steps": int(len(acts)), "mb": size_mb, "seconds": time.time() - t0}


def write_gif(frames: list[np.ndarray], path: str, fps: int = 20, caption: str = "") -> None:
    """An animated GIF of upright frames, with the instruction drawn underneath."""
    imgs = []
    for f in frames:
        im = Image.fromarray(f)
        if caption:
            canvas = Image.new("RGB", (im.width, im.height + 14), (255, 255, 255))
            canvas.paste(im, (0, 0))
            ImageDraw.Draw(canvas).text((2, im.height + 1), caption[: im.width // 5], fill=(0, 0, 0))
            im = canvas
        imgs.append(im.convert("P", palette=Image.ADAPTIVE, colors=64))
    tmp = path + ".tmp.gif"
    imgs[0].save(tmp, save_all=True, append_images=imgs[1:], duration=int(1000 / fps), loop=0, optimize=True)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- command line
@exits_on_bad_files("python -m data.mini_libero")
def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m data.mini_libero", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demos", help="generate expert demonstrations into a dataset directory")
    d.add_argument("--out", default="out/demos", help="dataset directory to write")
    d.add_argument("--suites", default="all", help="comma-separated suites (spatial,object,goal,long) or 'all'")
    d.add_argument("--per-task", type=int, default=20, help="successful demos per task (LIBERO has 50; README)")
    d.add_argument("--size", type=int, default=128, help="image resolution (square)")
    d.add_argument("--seed", type=int, default=0, help="expert style seed")
    d.add_argument("--workers", type=int, default=2, help="worker processes")
    e = sub.add_parser("expert", help="print expert success per task over the fixed init states")
    e.add_argument("--suites", default="all", help="comma-separated suites or 'all'")
    e.add_argument("--trials", type=int, default=N_INIT_STATES, help="init states per task (≤ 50)")
    e.add_argument("--seed", type=int, default=0, help="expert style seed")
    v = sub.add_parser("video", help="write a GIF of one expert episode")
    v.add_argument("--suite", default="spatial", help="suite")
    v.add_argument("--task", type=int, default=0, help="task index in the suite")
    v.add_argument("--init", type=int, default=0, help="init state index")
    v.add_argument("--size", type=int, default=128, help="image resolution")
    v.add_argument("--camera", default="agentview", choices=["agentview", "eye_in_hand", "both"], help="which camera(s)")
    v.add_argument("--out", default="out/episode.gif", help="GIF path")
    st = sub.add_parser("stats", help="print the statistics of a dataset (mini-LIBERO demos, LIBERO HDF5 or LeRobot)")
    st.add_argument("--data", default="out/demos", help="dataset path")
    st.add_argument("--data-format", default="auto", help="auto | mini | libero_hdf5 | lerobot")
    for sp in (d, e, v):
        sp.add_argument("--layout", default=DEFAULT_LAYOUT, help=f"where things start: {' | '.join(LAYOUTS)} "
                        "(libero-x<k> scales LIBERO's spreads by k; data/scenes.py)")
    args = p.parse_args(argv)
    if hasattr(args, "layout"):
        try:
            layout_scale(args.layout)
        except ValueError as err:
            p.exit(2, f"python -m data.mini_libero: --layout: {err}\n")
    suites = list(SUITES) if getattr(args, "suites", "all") == "all" else [suite_name(s) for s in args.suites.split(",")]

    if args.cmd == "expert":
        t0 = time.time()
        res = expert_success(suites, min(args.trials, N_INIT_STATES), args.seed, args.layout)
        for s, rates in res.items():
            print(f"{s:8s} mean {np.mean(rates):6.1%}  per task " + " ".join(f"{r:.0%}" for r in rates))
        print(f"({time.time() - t0:.1f}s)")
    elif args.cmd == "video":
        task = suite_tasks(suite_name(args.suite), args.layout)[args.task]
        ep = expert_episode(task, args.init, size=args.size)
        key = {"agentview": ["agentview_rgb"], "eye_in_hand": ["eye_in_hand_rgb"],
               "both": ["agentview_rgb", "eye_in_hand_rgb"]}[args.camera]
        frames = [np.concatenate([ep[k_][t] for k_ in key], axis=1) for t in range(ep["length"])]
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        write_gif(frames, args.out, caption=task.language)
        print(f"{args.out}: {ep['length']} steps, success={ep['success']}: {task.language}")
    elif args.cmd == "demos":
        write_demos(args.out, suites, args.per_task, args.size, args.seed, args.workers, layout=args.layout)
    elif args.cmd == "stats":
        open_dataset(args.data, args.data_format).print_summary()


if __name__ == "__main__":
    sys.exit(main())
