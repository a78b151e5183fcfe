"""eval_libero.py: Wilson intervals, chunk execution, settle steps, resume after a crash, failures, the CLI,
and (marked `libero`, skipped without the simulator) a smoke test on the real LIBERO backend."""
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

import eval_libero as E
from data.mini_libero import flip_image
from data.scenes import MAX_STEPS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cfg(tmp_path, *argv):
    return E.parse_config(["--out", str(tmp_path / "eval"), *argv])


def read_log(c) -> list[dict]:
    with open(os.path.join(c.out, "episodes.jsonl")) as f:
        return [json.loads(line) for line in f]


# ----------------------------------------------------------------------------- a scripted fake world
class FakeEnv:
    """Counts steps, records actions, succeeds after `succeed_at` env steps (settle steps included)."""

    def __init__(self, succeed_at=None):
        self.succeed_at, self.actions, self.t = succeed_at, [], 0
        img = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)          # every pixel distinct
        self.raw = img

    def seed(self, s): pass
    def close(self): pass

    def reset(self):
        self.t, self.actions = 0, []
        return self._obs()

    def set_init_state(self, state):
        return self._obs()

    def step(self, a):
        self.actions.append(np.array(a, dtype=np.float32))
        self.t += 1
        done = self.succeed_at is not None and self.t >= self.succeed_at
        return self._obs(), float(done), done, {}

    def _obs(self):
        return {"agentview_image": self.raw, "robot0_eye_in_hand_image": self.raw, "robot0_eef_pos": np.zeros(3),
                "robot0_eef_quat": np.array([1.0, 0, 0, 0]), "robot0_gripper_qpos": np.array([0.04, -0.04])}


class FakeBackend:
    name, suites_all, max_steps = "fake", ("spatial",), {"spatial": 12}

    def __init__(self, succeed_at=None):
        self.succeed_at, self.envs = succeed_at, []

    def default_render_size(self, s): return s
    def n_tasks(self, suite): return 2
    def instruction(self, suite, i): return f"task {i}"
    def init_states(self, suite, i): return np.zeros((50, 3))
    def versions(self): return {}

    def make_env(self, suite, i, size, seed, render=True, wrist=True):
        self.envs.append(FakeEnv(self.succeed_at))
        return self.envs[-1]


class CountingChunkPolicy:
    """Chunk number c, action j: [c, j, 0, 0, 0, 0, 1]; records the inputs of every call."""
    image_size = 8

    def __init__(self, horizon=4):
        self.horizon, self.calls, self.inputs = horizon, 0, []

    def __call__(self, images, wrist_images, proprio, instructions):
        self.inputs.append((images, wrist_images, proprio, instructions))
        out = np.zeros((len(images), self.horizon, 7), np.float32)
        out[:, :, 0], out[:, :, 1], out[:, :, 6] = self.calls, np.arange(self.horizon), 1.0
        self.calls += 1
        return out


# ----------------------------------------------------------------------------- pure helpers
def test_wilson_interval_values():
    assert E.wilson_interval(0, 0) == (0.0, 1.0)
    np.testing.assert_allclose(E.wilson_interval(5, 10), (0.236593, 0.763407), atol=1e-6)
    np.testing.assert_allclose(E.wilson_interval(0, 10), (0.0, 0.277533), atol=1e-6)
    np.testing.assert_allclose(E.wilson_interval(10, 10), (0.722467, 1.0), atol=1e-6)
    np.testing.assert_allclose(E.wilson_interval(45, 50), (0.786398, 0.956524), atol=1e-6)
    lo, hi = E.wilson_interval(3, 20)
    assert lo < 3 / 20 < hi
    np.testing.assert_allclose(E.wilson_interval(17, 20), (1 - hi, 1 - lo), atol=1e-12)   # symmetric


def test_chunk_queue_keeps_the_first_replan_steps_actions_in_order():
    q = E.ChunkQueue(3)
    assert len(q) == 0
    q.refill(np.arange(5 * 7, dtype=np.float32).reshape(5, 7))
    assert len(q) == 3
    assert [q.pop()[0] for _ in range(3)] == [0.0, 7.0, 14.0] and len(q) == 0
    q.refill(np.ones((2, 7)))                                   # a chunk shorter than replan_steps: all of it
    assert len(q) == 2
    q.clear()
    assert len(q) == 0


# ----------------------------------------------------------------------------- the protocol on a fake backend
@pytest.mark.parametrize("replan, horizon", [(3, 4), (4, 4), (5, 2), (1, 4)])
def test_chunks_are_executed_in_order_with_replanning(tmp_path, replan, horizon):
    backend, policy = FakeBackend(), CountingChunkPolicy(horizon)
    c = cfg(tmp_path, "--tasks", "0", "--trials-per-task", "1", "--replan-steps", str(replan), "--max-steps", "10")
    E.run_eval(c, policy=policy, backend=backend)
    acts = np.stack(backend.envs[0].actions)
    assert np.array_equal(acts[:10], np.tile(E.SETTLE_ACTION, (10, 1)))        # settle first
    per_chunk = min(replan, horizon)
    expected = [(k // per_chunk, k % per_chunk) for k in range(10)]            # (chunk, index within chunk)
    assert [(int(a[0]), int(a[1])) for a in acts[10:]] == expected
    assert policy.calls == -(-10 // per_chunk)


def test_policy_gets_upright_frames_8d_proprio_and_the_instruction(tmp_path):
    backend, policy = FakeBackend(), CountingChunkPolicy()
    E.run_eval(cfg(tmp_path, "--tasks", "1", "--trials-per-task", "1", "--max-steps", "2"), policy=policy, backend=backend)
    images, wrists, proprio, instr = policy.inputs[0]
    assert images.shape == (1, 8, 8, 3) and images.dtype == np.uint8
    assert np.array_equal(images[0], flip_image(backend.envs[0].raw)) and np.array_equal(wrists[0], images[0])
    assert proprio.shape == (1, 8) and proprio.dtype == np.float32
    assert instr == ["task 1"]


def test_a_policy_without_the_wrist_camera_gets_an_env_that_renders_agentview_only(tmp_path):
    class Recording(E.MiniBackend):
        def make_env(self, suite, i, size, seed, render=True, wrist=True):
            self.wrist = wrist
            return super().make_env(suite, i, size, seed, render, wrist)
    policy, backend = CountingChunkPolicy(), Recording()
    policy.image_size, policy.uses_wrist = 32, False
    E.run_eval(cfg(tmp_path, "--suite", "goal", "--tasks", "0", "--trials-per-task", "1", "--max-steps", "2"),
               policy=policy, backend=backend)
    images, wrists, _, _ = policy.inputs[0]
    assert backend.wrist is False and wrists is None and images.shape == (1, 32, 32, 3)


def test_settle_steps_are_not_counted_against_max_steps(tmp_path):
    # success exactly at the last allowed policy step: counting the 10 settle steps would make it a failure
    backend = FakeBackend(succeed_at=10 + 12)
    E.run_eval(cfg(tmp_path, "--tasks", "0", "--trials-per-task", "1"), policy=CountingChunkPolicy(), backend=backend)
    (rec,) = read_log(cfg(tmp_path))
    assert rec["success"] and rec["steps"] == 12 and backend.envs[0].t == 22
    backend = FakeBackend()                                     # never succeeds: stops after exactly max steps
    E.run_eval(cfg(tmp_path, "--tasks", "0", "--trials-per-task", "1", "--settle-steps", "3"),
               policy=CountingChunkPolicy(), backend=backend)
    (rec,) = read_log(cfg(tmp_path))
    assert not rec["success"] and rec["steps"] == 12 and backend.envs[0].t == 3 + 12


def test_exceptions_inside_an_episode_are_logged_and_count_as_failures(tmp_path):
    class Flaky(CountingChunkPolicy):
        def __call__(self, images, wrist_images, proprio, instructions):
            if instructions == ["task 1"]:
                raise RuntimeError("policy blew up")
            return super().__call__(images, wrist_images, proprio, instructions)
    c = cfg(tmp_path, "--trials-per-task", "2", "--num-envs", "1")
    res = E.run_eval(c, policy=Flaky(), backend=FakeBackend(succeed_at=13))
    recs = {(r["task"], r["init"]): r for r in read_log(c)}
    assert len(recs) == 4
    assert all(recs[0, k]["success"] and "error" not in recs[0, k] for k in range(2))
    assert all(not recs[1, k]["success"] and "RuntimeError: policy blew up" in recs[1, k]["error"]
               and "Traceback" in recs[1, k]["error"] for k in range(2))
    assert res["suites"]["spatial"]["success"] == 0.5


def test_a_policy_returning_a_bad_shape_fails_its_episodes(tmp_path):
    class Bad(CountingChunkPolicy):
        def __call__(self, *a):
            return np.zeros((1, 4, 6))
    c = cfg(tmp_path, "--tasks", "0", "--trials-per-task", "1")
    E.run_eval(c, policy=Bad(), backend=FakeBackend())
    (rec,) = read_log(c)
    assert not rec["success"] and "expected [1, H, 7]" in rec["error"]


# ----------------------------------------------------------------------------- mini-LIBERO
KEEP = ("suite", "task", "init", "seed", "success", "steps")


def test_resume_after_a_crash_gives_exactly_the_episodes_of_an_uninterrupted_run(tmp_path):
    argv = ["--policy", "expert", "--suite", "spatial,goal", "--tasks", "0,3", "--trials-per-task", "3"]
    full = E.parse_config(argv + ["--out", str(tmp_path / "full"), "--num-envs", "1"])
    E.run_eval(full)
    expected = sorted(tuple(r[k] for k in KEEP) for r in read_log(full))
    assert len(expected) == 12 and 0 < sum(r[4] for r in expected)

    class Crash(E.ExpertPolicy):                     # the process dies (not an episode error) mid-evaluation
        calls = 0
        def __call__(self, *a, **kw):
            Crash.calls += 1
            if Crash.calls == 120:
                raise KeyboardInterrupt
            return super().__call__(*a, **kw)
    part = E.parse_config(argv + ["--out", str(tmp_path / "part"), "--num-envs", "3"])
    with pytest.raises(KeyboardInterrupt):
        E.run_eval(part, policy=Crash(part.seed))
    before = read_log(part)
    assert 0 < len(before) < 12
    with open(os.path.join(part.out, "episodes.jsonl"), "a") as f:
        f.write('{"suite": "spatial", "task": 3, "in')  # a line cut by the crash
    part.resume = True
    E.run_eval(part)
    after = read_log(part)
    assert sorted(tuple(r[k] for k in KEEP) for r in after) == expected          # same set, no duplicates
    assert after[: len(before)] == before                                          # finished ones kept as they were
    with open(os.path.join(part.out, "metrics.json")) as f:
        assert json.load(f)["episodes_this_run"] == 12 - len(before)               # nothing repeated


def test_resume_refuses_a_log_of_another_policy(tmp_path):
    c = cfg(tmp_path, "--policy", "random", "--suite", "spatial", "--tasks", "0", "--trials-per-task", "1", "--max-steps", "3")
    E.run_eval(c)
    c.policy, c.resume = "expert", True
    with pytest.raises(SystemExit, match="episodes of --env mini --policy random"):
        E.run_eval(c)


def test_expert_succeeds_and_random_fails_on_mini_libero(tmp_path):
    c = cfg(tmp_path, "--policy", "expert", "--suite", "object", "--tasks", "0,5", "--trials-per-task", "3")
    assert E.run_eval(c)["suites"]["object"]["success"] == 1.0
    c = cfg(tmp_path, "--policy", "random", "--suite", "spatial", "--tasks", "0", "--trials-per-task", "2")
    res = E.run_eval(c)
    assert res["suites"]["spatial"]["success"] == 0.0
    assert [r["steps"] for r in read_log(c)] == [MAX_STEPS["spatial"]] * 2     # mini-LIBERO's own table


def test_random_policy_is_reproducible_per_episode(tmp_path):
    p1, p2 = E.RandomPolicy(7), E.RandomPolicy(7)
    p1.start(0, dict(suite="goal", task=2, init=4), None)
    p2.start(5, dict(suite="goal", task=2, init=4), None)
    assert np.array_equal(p1(None, None, None, None, slots=[0]), p2(None, None, None, None, slots=[5]))
    p2.start(5, dict(suite="goal", task=2, init=5), None)
    assert not np.array_equal(p1(None, None, None, None, slots=[0]), p2(None, None, None, None, slots=[5]))


def test_a_vla_checkpoint_loads_lazily_through_vla_train(tmp_path, monkeypatch):
    loaded = []

    class Policy(CountingChunkPolicy):
        image_size = 64

        @classmethod
        def load(cls, path):
            loaded.append(path)
            cls.last = cls(horizon=10)
            return cls.last
    monkeypatch.setitem(sys.modules, "vla_train", types.SimpleNamespace(Policy=Policy))
    ckpt = tmp_path / "vla"
    ckpt.mkdir()
    c = cfg(tmp_path, "--policy", str(ckpt), "--suite", "long", "--tasks", "2", "--trials-per-task", "2", "--max-steps", "12")
    res = E.run_eval(c)
    assert loaded == [str(ckpt)] and res["render_size"] == 64 and res["suites"]["long"]["n"] == 2
    images, wrists, proprio, _ = Policy.last.inputs[0]                      # rendered at the policy's size
    assert images.shape == wrists.shape == (2, 64, 64, 3) and proprio.shape == (2, 8)
    assert all(r["steps"] == 12 and "error" not in r for r in read_log(c))


def test_results_files_and_one_gif_per_episode(tmp_path):
    out = tmp_path / "ev"
    r = subprocess.run([sys.executable, "eval_libero.py", "--policy", "expert", "--suite", "goal", "--tasks", "7",
                        "--trials-per-task", "2", "--video", "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "average over 1 suite(s): 100.0%" in r.stdout and "env steps/s" in r.stdout
    assert sorted(os.listdir(out / "videos")) == ["goal_t07_i00_success.gif", "goal_t07_i01_success.gif"]
    res, met = json.loads((out / "results.json").read_text()), json.loads((out / "metrics.json").read_text())
    t = res["suites"]["goal"]["tasks"][0]
    assert t["instruction"] == "turn on the stove" and t["n"] == 2 and t["ci95"] == list(E.wilson_interval(2, 2))
    assert met["success"] == {"goal": 1.0} and met["episodes"] == 2 and met["env_steps_per_s"] > 0
    rec = json.loads((out / "episodes.jsonl").read_text().splitlines()[0])
    assert {"suite", "task", "init", "seed", "success", "steps", "wall_s"} <= set(rec) and rec["seed"] == 7


@pytest.mark.parametrize("argv, msg", [
    (["--suite", "90"], "unknown suite '90' for --env mini"),
    (["--tasks", "10"], "task 10 out of range"),
    (["--trials-per-task", "51"], "> the 50 init states"),
    (["--policy", "no/such/dir"], "neither expert, random nor a checkpoint"),
    (["--env", "gym"], "--env must be mini or libero"),
    (["--replan-steps", "0"], "must be >= 1"),
])
def test_bad_input_is_a_one_line_error(tmp_path, argv, msg):
    with pytest.raises(SystemExit) as e:
        E.run_eval(cfg(tmp_path, "--suite", "spatial", *argv))
    assert str(e.value).startswith("eval_libero.py: ") and msg in str(e.value) and "\n" not in str(e.value)


def test_missing_real_backend_names_the_install_command():
    try:
        import libero.libero  # noqa: F401
        pytest.skip("the real LIBERO backend is installed here")
    except Exception:
        pass
    with pytest.raises(SystemExit, match="pip install -r requirements-libero.txt"):
        E.make_backend("libero")


# ----------------------------------------------------------------------------- real LIBERO (skipped without it)
@pytest.fixture(scope="module")
def real_backend():
    os.environ.setdefault("MUJOCO_GL", "egl")
    pytest.importorskip("libero.libero", reason="real LIBERO not installed: pip install -r requirements-libero.txt")

    class Recording(E.LiberoBackend):             # keeps the raw observations so the test can check the flip
        raw = []
        def make_env(self, suite, i, size, seed, render=True, wrist=True):
            env = super().make_env(suite, i, size, seed, render, wrist)
            step, set_init = env.step, env.set_init_state
            def rec_step(a):
                out = step(a); Recording.raw.append(out[0]); return out
            def rec_init(s):
                o = set_init(s); Recording.raw.append(o); return o
            env.step, env.set_init_state = rec_step, rec_init
            return env
    return Recording()


class TinyVLAStandIn:
    """The VLA interface at the protocol's 224 px input; used until the suite provides a tiny VLA checkpoint."""
    image_size = 224

    def __call__(self, images, wrist_images, proprio, instructions):
        return np.tile(np.array([0.1, 0, 0, 0, 0, 0, -1], np.float32), (len(images), 10, 1))


class Recorder:
    """Wraps a policy and keeps the inputs of every call."""
    def __init__(self, policy):
        self.policy, self.image_size, self.inputs = policy, policy.image_size, []

    def __call__(self, *args):
        self.inputs.append(args)
        return self.policy(*args)


@pytest.fixture
def vla_policy(request):
    """The tiny VLA when the test suite provides one (a `tiny_vla` fixture: a vla_train.py checkpoint dir)."""
    try:
        ckpt = request.getfixturevalue("tiny_vla")
    except pytest.FixtureLookupError:
        return TinyVLAStandIn()
    from vla_train import Policy
    return Policy.load(ckpt)


@pytest.mark.libero
@pytest.mark.parametrize("which", ["vla", "random"])
def test_real_libero_smoke(tmp_path, real_backend, request, which):
    real_backend.raw.clear()
    policy = Recorder(request.getfixturevalue("vla_policy")) if which == "vla" else E.RandomPolicy(7)
    size = 256 if which == "vla" else 128                  # the protocol's render; 128 keeps the second one cheaper
    c = cfg(tmp_path, "--env", "libero", "--policy", which, "--suite", "spatial", "--tasks", "0",
            "--trials-per-task", "1", "--max-steps", "20", "--num-envs", "1", "--render-size", str(size))
    res = E.run_eval(c, policy=policy, backend=real_backend)
    (rec,) = read_log(c)
    assert rec["steps"] == 20 and "error" not in rec, rec.get("error")
    assert len(real_backend.raw) == 1 + 10 + 20                      # init state, settle steps, policy steps
    obs = real_backend.raw[-1]
    raw = obs["agentview_image"]
    assert raw.shape == (size, size, 3) and raw.dtype == np.uint8
    assert obs["robot0_eye_in_hand_image"].shape == (size, size, 3)
    agent, wrist, proprio = E.policy_inputs(obs, policy.image_size)
    assert agent.shape == wrist.shape == (policy.image_size, policy.image_size, 3) and proprio.shape == (8,)
    up = flip_image(raw).astype(float).mean(-1)
    assert up[-size // 4:].mean() > up[: size // 4].mean() + 20      # upright: the bright table is at the bottom
    if which == "vla":                                               # chunks of >= 5: 20 steps = 4 calls
        s = policy.image_size
        assert len(policy.inputs) == 4 and policy.inputs[0][0].shape == (1, s, s, 3)
        assert policy.inputs[0][2].shape == (1, 8) and policy.inputs[0][3] == [rec["instruction"]]
    assert res["backend"]["mujoco"] and res["suites"]["spatial"]["n"] == 1
