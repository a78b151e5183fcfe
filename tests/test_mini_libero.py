"""mini-LIBERO: determinism, tasks, success predicates, grasp physics, actions, init states, demo files."""
import numpy as np
import pytest

from data.demos import DemoDataset, chunk_episode
from data.episodes import DatasetError
from data.mini_libero import (OffScreenRenderEnv, expert_episode, flip_image, get_benchmark, write_demos,
                              get_benchmark_dict, proprio_from_obs)
from data.scenes import DRAWER_OPEN, N_INIT_STATES, STOVE_ON, SUITES, SceneBuilder, suite_tasks
from data.world import EEF_MIN_Z, GRIPPER_SPEED, MAX_WIDTH, POS_SCALE, World

ALL_TASKS = [t for s in SUITES for t in suite_tasks(s)]


def scene(*adds):
    """A tiny hand-made world: SceneBuilder.add(...) argument tuples."""
    s = SceneBuilder(np.random.default_rng(0))
    for a in adds:
        s.add(*a[:4], **(a[4] if len(a) > 4 else {}))
    return s.world()


def drive(w: World, target, grip=-1.0, steps=80):
    for _ in range(steps):
        err = np.asarray(target) - w.eef_pos
        w.step(np.concatenate([np.clip(err / POS_SCALE, -1, 1), np.zeros(3), [grip]]))


# ----------------------------------------------------------------------------- benchmark shape
def test_four_suites_of_ten_tasks_with_fifty_fixed_init_states():
    bd = get_benchmark_dict()
    assert set(bd) == {"libero_spatial", "libero_object", "libero_goal", "libero_10"}
    for name, make in bd.items():
        b = make()
        assert b.n_tasks == 10 and len(set(b.get_task_names())) == 10
        states = b.get_task_init_states(0)
        assert states.shape[0] == N_INIT_STATES and states.dtype == np.float64
        assert len(np.unique(states.round(6), axis=0)) == N_INIT_STATES          # all different
        assert np.array_equal(states, make().get_task_init_states(0))             # and fixed
    assert get_benchmark("libero_10").name == "long"
    with pytest.raises(ValueError, match="unknown suite"):
        get_benchmark("libero_nope")


def test_instructions_are_libero_style():
    langs = [t.language for t in ALL_TASKS]
    assert len(set(langs)) == 40
    assert "pick up the black bowl between the plate and the ramekin and place it on the plate" in langs
    assert "pick up the alphabet soup and place it in the basket" in langs
    assert "turn on the stove" in langs


# ----------------------------------------------------------------------------- determinism and observations
def test_same_init_state_and_actions_give_same_observations():
    task = get_benchmark("goal").get_task(3)
    init = get_benchmark("goal").get_task_init_states(3)[7]
    actions = np.random.default_rng(0).uniform(-1, 1, (40, 7))
    runs = []
    for _ in range(2):
        env = OffScreenRenderEnv(task, 64, 64)
        env.reset()
        obs = env.set_init_state(init)
        for a in actions:
            obs, *_ = env.step(a)
        runs.append(obs)
    for k in runs[0]:
        assert np.array_equal(runs[0][k], runs[1][k]), k


def test_observation_keys_shapes_and_flip_convention():
    task = get_benchmark("spatial").get_task(0)
    env = OffScreenRenderEnv(task, 96, 96)
    obs = env.set_init_state(get_benchmark("spatial").get_task_init_states(0)[0])
    assert obs["agentview_image"].shape == (96, 96, 3) and obs["agentview_image"].dtype == np.uint8
    assert obs["robot0_eye_in_hand_image"].shape == (96, 96, 3)
    assert obs["robot0_eef_pos"].shape == (3,) and obs["robot0_eef_quat"].shape == (4,)
    assert obs["robot0_gripper_qpos"].shape == (2,)
    assert "black_bowl_1_pos" in obs
    upright, _ = env.renderer.render()
    assert np.array_equal(flip_image(obs["agentview_image"]), upright)      # env frames are upside down
    # upright: the sky (robot side, far end) is at the top of the stored image
    assert upright[:5].mean() < upright[-5:].mean()
    p = proprio_from_obs(obs)
    assert p.shape == (8,) and np.allclose(p[6:], [MAX_WIDTH / 2, -MAX_WIDTH / 2])
    # one camera on request (LIBERO's camera_names): the same agentview frame, no wrist frame
    one = OffScreenRenderEnv(task, 96, 96, camera_names=("agentview",))
    obs1 = one.set_init_state(get_benchmark("spatial").get_task_init_states(0)[0])
    assert np.array_equal(obs1["agentview_image"], obs["agentview_image"]) and "robot0_eye_in_hand_image" not in obs1


@pytest.mark.parametrize("shape,dtype", [((128, 128, 3), np.uint8), ((7, 5), np.float32), ((6, 4, 4), np.float64)])
def test_flip_image_is_a_180_degree_turn_into_a_new_contiguous_array(shape, dtype):
    img = (np.random.default_rng(0).random(shape) * 255).astype(dtype)
    for x in (img, img[::2]):                                               # contiguous and strided input
        out = flip_image(x)
        assert np.array_equal(out, x[::-1, ::-1]) and out.dtype == x.dtype and out.flags.c_contiguous
        assert not np.shares_memory(out, x)


# ----------------------------------------------------------------------------- actions
def test_actions_are_clipped_and_nan_rejected():
    a, b = scene(), scene()
    a.step([5, 0, 0, 0, 0, 0, -1])
    b.step([1, 0, 0, 0, 0, 0, -1])
    assert np.allclose(a.eef_pos, b.eef_pos)
    with pytest.raises(ValueError, match="NaN"):
        a.step([np.nan, 0, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="7-D"):
        a.step([0, 0, 0])


def test_nothing_passes_through_the_table():
    w = scene(("box_1", "box", "red", (0.0, 0.0)))
    drive(w, [0, 0, -0.5], steps=40)
    assert w.eef_pos[2] == pytest.approx(EEF_MIN_Z)
    drive(w, [0, 0, 0.012], grip=1.0)                          # grasp the box, then push it into the table
    assert w.held == 0
    drive(w, [0, 0, -0.5], grip=1.0, steps=40)
    assert w.pos[0, 2] >= 0.0


# ----------------------------------------------------------------------------- grasp / carry / release
def test_closing_on_nothing_closes_fully_and_holds_nothing():
    w = scene(("box_1", "box", "red", (0.2, 0.0)))
    drive(w, [0, 0, 0.012])
    for _ in range(10):
        w.step([0, 0, 0, 0, 0, 0, 1])
    assert w.held == -1 and w.width == 0.0


def test_grasp_carry_and_release_onto_a_plate():
    w = scene(("box_1", "box", "red", (0.0, 0.0)), ("plate", "plate", "white", (0.2, 0.1)))
    drive(w, [0, 0, 0.012])
    for _ in range(6):
        w.step([0, 0, 0, 0, 0, 0, 1])
    assert w.held == 0 and w.width == pytest.approx(w.bodies[0].grasp_width)
    drive(w, [0.2, 0.1, 0.15], grip=1.0)
    assert np.allclose(w.pos[0, :2], [0.2, 0.1], atol=0.01) and w.pos[0, 2] > 0.1     # carried
    for _ in range(3):
        w.step([0, 0, 0, 0, 0, 0, -1])
    assert w.held == -1
    assert w.support[0] == 1 and w.pos[0, 2] == pytest.approx(w.surface_z(1))         # fell onto the plate


def test_release_over_the_table_falls_to_the_table():
    w = scene(("box_1", "box", "red", (0.0, 0.0)))
    drive(w, [0, 0, 0.012])
    for _ in range(6):
        w.step([0, 0, 0, 0, 0, 0, 1])
    drive(w, [0.1, 0.0, 0.2], grip=1.0)
    for _ in range(3):
        w.step([0, 0, 0, 0, 0, 0, -1])
    assert w.support[0] == -1 and w.pos[0, 2] == 0.0


def test_open_or_badly_placed_gripper_does_not_grasp():
    w = scene(("box_1", "box", "red", (0.0, 0.0)))
    drive(w, [0.05, 0, 0.012])                                 # 5 cm to the side: outside the fingers
    for _ in range(8):
        w.step([0, 0, 0, 0, 0, 0, 1])
    assert w.held == -1
    w2 = scene(("bowl", "bowl", "black", (0.0, 0.0)))
    w2.width = w2.bodies[0].grasp_width - GRIPPER_SPEED        # fingers already narrower than the bowl
    drive(w2, [0, 0, 0.015], grip=0.0)
    for _ in range(8):
        w2.step([0, 0, 0, 0, 0, 0, 1])
    assert w2.held == -1


def test_carrying_a_plate_carries_what_is_on_it():
    s = SceneBuilder(np.random.default_rng(0))
    ram = s.add("ramekin", "ramekin", "cream", (0.0, 0.0))
    s.add_on("box_1", "box", "red", ram)
    w = s.world()
    drive(w, [0, 0, 0.018])
    for _ in range(6):
        w.step([0, 0, 0, 0, 0, 0, 1])
    drive(w, [0.1, 0.05, 0.2], grip=1.0)
    assert np.allclose(w.pos[1, :2], w.pos[0, :2]) and w.pos[1, 2] == pytest.approx(w.surface_z(0))


def test_drawer_opens_by_pulling_its_handle_and_takes_objects_along():
    s = SceneBuilder(np.random.default_rng(0))
    d = s.cabinet((0.0, 0.25), open_drawer="middle", opening=0.10)
    s.add_on("box_1", "box", "red", d["middle"], (0.0, -0.02))
    w = s.world()
    i = d["middle"]
    box_y = w.pos[-1, 1]
    drive(w, w.handle_pos(i))
    for _ in range(6):
        w.step([0, 0, 0, 0, 0, 0, 1])
    assert w.held == i
    for _ in range(20):
        w.step([0, 1, 0, 0, 0, 0, 1])                          # push it closed
    assert w.joint[i] == 0.0 and w.pos[-1, 1] == pytest.approx(box_y + 0.10)
    for _ in range(20):
        w.step([0, -1, 0, 0, 0, 0, 1])                         # pull it open
    assert w.joint[i] == pytest.approx(w.bodies[i].rail[1])


def test_stove_knob_turns_with_the_wrist():
    s = SceneBuilder(np.random.default_rng(0))
    k = s.stove((0.0, 0.2))["knob"]
    w = s.world()
    drive(w, w.handle_pos(k))
    for _ in range(6):
        w.step([0, 0, 0, 0, 0, 0, 1])
    assert w.held == k
    for _ in range(10):
        w.step([0, 0, 0, 0, 0, 1, 1])                          # +yaw
    assert w.joint[k] >= STOVE_ON


# ----------------------------------------------------------------------------- success predicates
@pytest.mark.parametrize("task", ALL_TASKS, ids=lambda t: f"{t.suite}{t.task_id}")
def test_every_task_is_solved_by_the_expert_and_not_at_start(task):
    world, _ = task.scene(0)
    assert not task.success(world)
    for k in (0, 1):
        ep = expert_episode(task, k, render=False)
        assert ep["success"], f"{task.suite}/{task.task_id} init {k}: {ep['phase'][-1]}"
        w, _ = task.scene(k)
        w.set_state(ep["sim_state"][-1])
        w.step(ep["actions"][-1])
        assert task.success(w)


def test_hand_made_states_satisfy_and_violate_predicates():
    goal = get_benchmark("goal")
    w, _ = goal.get_task(8).scene(0)                           # put the bowl on the plate
    bowl, plate = w.index["bowl"], w.index["plate"]
    w.support[bowl] = plate
    assert goal.get_task(8).success(w)
    w.held = bowl                                              # still in the hand: not placed
    assert not goal.get_task(8).success(w)
    w, _ = goal.get_task(0).scene(0)                           # open the middle drawer
    w.joint[w.index["middle_drawer"]] = DRAWER_OPEN
    assert goal.get_task(0).success(w)
    w.joint[w.index["middle_drawer"]] = DRAWER_OPEN - 0.01
    assert not goal.get_task(0).success(w)
    w, _ = goal.get_task(7).scene(0)                           # turn on the stove
    w.joint[w.index["stove_knob"]] = STOVE_ON
    assert goal.get_task(7).success(w)
    lt = get_benchmark("long").get_task(6)                     # mug on plate + pudding right of plate
    w, _ = lt.scene(0)
    mug, pud, plate = w.index["white_mug"], w.index["chocolate_pudding"], w.index["plate"]
    w.support[mug] = plate
    w.pos[pud, :2] = w.pos[plate, :2] + [0.10, 0.0]
    assert lt.success(w)
    w.pos[pud, :2] = w.pos[plate, :2] - [0.10, 0.0]            # left of it instead
    assert not lt.success(w)


# ----------------------------------------------------------------------------- demo files
def test_demo_dataset_round_trip(tmp_path):
    out = str(tmp_path / "demos")
    write_demos(out, ["spatial"], per_task=2, size=48, workers=1)
    ds = DemoDataset(out)
    assert len(ds) == 20 and ds.meta["image_size"] == 48
    ep = ds.load(0)
    T = ds.episodes[0]["length"]
    assert ep["agentview_rgb"].shape == (T, 48, 48, 3) and ep["eye_in_hand_rgb"].dtype == np.uint8
    assert ep["state"].shape == (T, 8) and ep["actions"].shape == (T, 7) and len(ep["phase"]) == T
    # the stored frame is the upright render of the stored sim state
    task = suite_tasks("spatial")[ds.episodes[0]["task_id"]]
    env = OffScreenRenderEnv(task, 48, 48)
    obs = env.set_init_state(ep["sim_state"][5])
    assert np.array_equal(ep["agentview_rgb"][5], flip_image(obs["agentview_image"]))
    assert ds.episodes[0]["init_state"] >= N_INIT_STATES        # demos never use the evaluation init states
    chunks = ds.action_chunks(8, split=None)
    assert chunks.shape == (ds.stats["n_steps"], 8, 7)
    q = np.array(ds.stats["actions"]["q01"]), np.array(ds.stats["actions"]["q99"])
    assert np.all(q[0] <= q[1]) and q[0][-1] == -1.0 and q[1][-1] == 1.0


def test_chunks_pad_with_holds_at_episode_end():
    a = np.arange(3 * 7, dtype=np.float32).reshape(3, 7)
    c = chunk_episode(a, 4)
    assert c.shape == (3, 4, 7)
    assert np.array_equal(c[0, :3], a) and np.array_equal(c[2, 0], a[2])
    assert np.all(c[2, 1:, :6] == 0) and np.all(c[2, 1:, 6] == a[-1, 6])


def test_missing_dataset_is_a_one_line_error(tmp_path):
    with pytest.raises(DatasetError, match="not a demo dataset"):
        DemoDataset(str(tmp_path / "nope"))


def test_expert_variation_is_only_what_a_frame_shows():
    """Default demos vary in style (heights, yaw, grasp offsets) but not in speed, pauses or tremor: from the same
    world state the default expert's next action depends only on its style, so two operators of one style agree;
    with noise=True (the human-like variant) they do not."""
    from data.expert import Expert
    task = suite_tasks("spatial")[0]
    def first_actions(noise, seed):
        world, plan = task.scene(3)
        e = Expert(world, plan, np.random.default_rng([0, seed]), style=False, noise=noise)
        acts = []
        for _ in range(30):
            a, _ = e.act(world)
            world.step(a)
            acts.append(a)
        return np.array(acts)
    assert np.array_equal(first_actions(False, 1), first_actions(False, 2))
    assert not np.allclose(first_actions(True, 1), first_actions(True, 2))
    a = first_actions(False, 1)
    assert np.isclose(np.abs(a[0, :3]).max(), 0.85)          # far from the goal: the fixed top speed


def test_expert_episode_runs_the_given_controller():
    """expert_episode(expert_cls=…) drives the episode with that controller (bench/fast_predictability.py swaps the
    translation law this way): a controller that never translates moves no axis and fails the task."""
    from data.expert import Expert

    class Still(Expert):
        def _command(self, err, vmax):
            return np.zeros(3)

    task = suite_tasks("spatial")[0]
    still = expert_episode(task, 1000, render=False, max_steps=40, expert_cls=Still)
    moving = expert_episode(task, 1000, render=False, max_steps=40)
    assert np.abs(np.stack(still["actions"])[:, :3]).max() == 0 and not still["success"]
    assert np.abs(np.stack(moving["actions"])[:, :3]).max() > 0.5
