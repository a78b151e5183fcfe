"""mini-LIBERO's layouts: LIBERO's canonical scenes with LIBERO's measured spreads, the calibration scales, the
wide position-generalisation suite, and how evaluation reports the layout a policy is run on."""
import json

import numpy as np
import pytest

from data.mini_libero import expert_success, get_benchmark
from data.scenes import LAYOUTS, N_INIT_STATES, SUITES, layout_scale, suite_tasks
from eval_libero import Config, run_eval

# LIBERO's own spread per free body, half of max - min over a task's 50 init states (metres), as measured from its
# .pruned_init files: (low, high) of what the suite shows for that kind of body
LIBERO_SPREAD = {
    "spatial": lambda name, on_fixture: (0.02, 0.04) if on_fixture else (0.015, 0.015),
    "object": lambda name, target: (0.015, 0.015) if name == "basket" else (0.0, 0.005) if target else (0.0, 0.01),
    "goal": lambda name, _: (0.014, 0.02),
    "long": lambda name, _: (0.01, 0.01) if name == "basket" else (0.022, 0.025),
}


def free_body_spreads(task):
    """{body name: (half-range of x, of y)} over the task's 50 init states, for every body that is not a fixture."""
    worlds = [task.scene(k)[0] for k in range(N_INIT_STATES)]
    w0 = worlds[0]
    out = {}
    for i, b in enumerate(w0.bodies):
        if b.fixture:
            continue
        xy = np.array([w.pos[i, :2] for w in worlds])
        out[b.name] = (xy.max(0) - xy.min(0)) / 2
    return out, w0


@pytest.mark.parametrize("suite", SUITES)
def test_every_free_body_spreads_as_in_libero_within_20_percent(suite):
    for task in suite_tasks(suite, "libero"):
        spreads, w0 = free_body_spreads(task)
        target = task.scene(0)[1][0][1]                          # the first body the plan moves
        for name, (sx, sy) in spreads.items():
            i = w0.index[name]
            base = w0.support[i]
            flag = (base >= 0 and w0.bodies[base].fixture == "static") if suite == "spatial" else name == target
            lo, hi = LIBERO_SPREAD[suite](name, flag)
            for v in (sx, sy):
                assert 0.8 * lo <= v <= 1.2 * hi + 1e-9, (suite, task.task_id, name, v, (lo, hi))


def test_scenes_are_deterministic_per_suite_task_and_index():
    for layout in LAYOUTS:
        t = suite_tasks("spatial", layout)[3]
        assert np.array_equal(t.scene(7)[0].get_state(), suite_tasks("spatial", layout)[3].scene(7)[0].get_state())
        assert not np.array_equal(t.scene(7)[0].get_state(), t.scene(8)[0].get_state())
    a, b = suite_tasks("goal", "libero")[0].scene(5)[0], suite_tasks("goal", "libero")[1].scene(5)[0]
    assert not np.array_equal(a.get_state(), b.get_state())     # each task draws its own 50 states


def test_scaled_layouts_scale_the_same_draws():
    """libero-x3's scene k is libero's draw with three times the offsets (where no overlap forced a redraw)."""
    one, three = suite_tasks("goal", "libero")[4], suite_tasks("goal", "libero-x3")[4]
    canon = np.mean([one.scene(k)[0].pos for k in range(N_INIT_STATES)], 0)
    d1, d3 = one.scene(2)[0].pos - canon, three.scene(2)[0].pos - canon
    assert np.allclose(d3[:, :2], 3 * d1[:, :2], atol=0.01)
    spread = lambda t: np.ptp([t.scene(k)[0].pos[:, :2] for k in range(N_INIT_STATES)], axis=0).max()
    assert spread(three) > 2.5 * spread(one)


def mean_positions(task, names):
    worlds = [task.scene(k)[0] for k in range(N_INIT_STATES)]
    return {n: np.mean([w.pos[w.index[n], :2] for w in worlds], 0) for n in names}


@pytest.mark.parametrize("suite,tasks,names", [
    ("spatial", range(10), ["wooden_cabinet", "flat_stove", "plate", "ramekin", "cookie_box", "black_bowl_2"]),
    ("goal", range(10), ["wooden_cabinet", "flat_stove", "rack", "plate", "bowl", "cream_cheese", "wine_bottle"]),
    ("object", range(10), ["basket"]),
    ("long", (0, 1, 7), ["basket", "alphabet_soup", "tomato_sauce", "cream_cheese", "butter", "ketchup"]),
])
def test_a_suite_shares_its_canonical_scene_where_libero_does(suite, tasks, names):
    ts = suite_tasks(suite, "libero")
    ref = mean_positions(ts[tasks[0]], names)
    for t in tasks:
        for n, p in mean_positions(ts[t], names).items():
            assert np.abs(p - ref[n]).max() < 0.008, (suite, t, n, p, ref[n])   # 50 draws of ±1.5 cm: mean ±~0.4 cm
    if suite == "goal":                                        # literally one scene: same bodies in every task
        assert len({tuple(b.name for b in t.scene(0)[0].bodies) for t in ts}) == 1


def test_the_wide_layout_spreads_bodies_over_the_table():
    t = suite_tasks("object", "wide")[0]
    xs = [t.scene(k)[0].pos[t.scene(k)[0].index["alphabet_soup"], 0] for k in range(N_INIT_STATES)]
    assert np.ptp(xs) > 0.3


@pytest.mark.parametrize("layout", ["libero", "wide"])
def test_the_expert_solves_every_task(layout):
    res = expert_success(SUITES, trials=10, layout=layout)
    assert all(r == 1.0 for rates in res.values() for r in rates), res


def test_layout_names():
    assert layout_scale("libero") == 1.0 and layout_scale("libero-x3") == 3.0 and layout_scale("wide") is None
    assert layout_scale("libero-x1.5") == 1.5
    for bad in ("liberox2", "libero-x0", "narrow", ""):
        with pytest.raises(ValueError, match="libero, libero-x2, libero-x3, wide"):
            layout_scale(bad)
    assert get_benchmark("spatial", "libero-x2").tasks[0].scale == 2.0


def test_a_wrong_layout_name_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match=r"--layout: unknown layout 'tight': expected one of libero, libero-x2"):
        run_eval(Config(policy="random", suite="goal", tasks="0", trials_per_task=1, layout="tight", out=str(tmp_path)))


def test_replay_runs_through_eval_and_a_layout_mismatch_is_reported(demos_dir, tmp_path):
    """The blind floor: replaying a same-task demo open-loop. The demos were drawn at libero layouts; evaluated on
    the wide ones, the banner and metrics.json say so."""
    base = dict(policy="replay", data=demos_dir, suite="goal", tasks="0,1", trials_per_task=3, max_steps=60)
    res = run_eval(Config(**base, out=str(tmp_path / "a")))
    again = run_eval(Config(**base, out=str(tmp_path / "b")))
    assert res["suites"] == again["suites"] and res["layout"] == "libero" and res["trained_layout"] == "libero"
    m = json.load(open(tmp_path / "a" / "metrics.json"))
    assert m["layout"] == "libero" and not m["layout_mismatch"]
    run_eval(Config(**base, layout="wide", out=str(tmp_path / "c")))
    m = json.load(open(tmp_path / "c" / "metrics.json"))
    assert m["layout"] == "wide" and m["trained_layout"] == "libero" and m["layout_mismatch"]


def test_replay_executes_the_demo_then_holds(demos_dir):
    from eval_libero import ReplayPolicy
    from data.mini_libero import OffScreenRenderEnv
    pol = ReplayPolicy(demos_dir, seed=0)
    task = get_benchmark("goal").get_task(1)
    pol.start(0, dict(suite="goal", task=1, init=0), OffScreenRenderEnv(task, render=False))
    demo = [pol.ds.actions(i) for i in pol.by_task[task.language]]
    acts = [pol(None, None, None, [task.language], slots=[0])[0, 0] for _ in range(len(max(demo, key=len)) + 3)]
    played = next(d for d in demo if np.allclose(acts[: len(d)], d))        # one of the task's training demos
    assert np.allclose(acts[len(played)][:6], 0) and acts[len(played)][6] == played[-1][6]
