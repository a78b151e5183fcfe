"""knn_probe.py: the k-NN on hand cases, the labels from privileged state, the bootstrap, and a run on the fixture."""
import json

import numpy as np
import pytest

import knn_probe as K
from conftest import run


def test_knn_predict_hand_case():
    memory = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = np.array([0, 0, 1, 1])
    queries = np.array([[1.0, 0.05], [0.05, 1.0], [2.0, 0.3]])        # cosine: the scale of a query is irrelevant
    assert K.knn_predict(memory, labels, queries, k=1).tolist() == [0, 1, 0]
    assert K.knn_predict(memory, labels, queries, k=3).tolist() == [0, 1, 0]   # 2 votes against 1
    # k larger than the memory: every row votes, 2 against 2, the nearer label wins the tie
    assert K.knn_predict(memory, labels, queries, k=10).tolist() == [0, 1, 0]


def test_knn_tie_goes_to_the_nearer_label():
    memory, labels = np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1])
    assert K.knn_predict(memory, labels, np.array([[0.8, 0.6], [0.6, 0.8]]), k=2).tolist() == [0, 1]


def test_centering_changes_the_boundary():
    # a shared offset [0, 10]: raw cosine splits a and b at their angle bisector (x ≈ 0.474 at y = 10), centred
    # cosine at their midpoint (x = 0.5); a query in between goes to a raw and to b centred
    memory, labels, q = np.array([[2.0, 10.0], [-1.0, 10.0]]), np.array([0, 1]), np.array([[0.49, 10.0]])
    assert K.knn_predict(memory, labels, q, k=1).tolist() == [0]
    assert K.knn_predict(memory, labels, q, k=1, center=True).tolist() == [1]


def test_phase_classes_and_positions():
    assert [K.phase_class(p) for p in ["move above the black bowl", "lower the gripper to the bowl", "grasp the bowl",
                                       "lift the bowl", "carry it to the plate", "lower it onto the plate", "release",
                                       "move the gripper up", "move to the handle of the top drawer",
                                       "pull the top drawer open", "turn the stove knob", "done"]] == \
        ["move above", "lower", "grasp", "lift", "carry", "place", "release", "retreat", "approach", "push/pull",
         "turn", "other"]
    assert K.position_label(np.array([0.05, -0.05, 0.01]), 0.03) == "x+ y- z0"
    names = {"bowl": 0, "black bowl": 1, "plate": 2}
    assert K.phase_targets(["move above the black bowl", "release", "carry it to the plate"], names, 0) == [1, 1, 2]
    assert K.phase_targets(["start"], names, 2) == [2]


def test_bootstrap_ci_groups():
    assert K.bootstrap_ci([1, 1, 1, 1], [0, 0, 1, 1]) == [1.0, 1.0, 1.0]
    m, lo, hi = K.bootstrap_ci([1, 0] * 50, np.repeat(np.arange(10), 10), n_boot=500)
    assert m == 0.5 and lo <= m <= hi
    # one episode all right, one all wrong: resampling episodes spans the whole range
    m, lo, hi = K.bootstrap_ci([1] * 10 + [0] * 10, [0] * 10 + [1] * 10, n_boot=500)
    assert m == 0.5 and lo == 0.0 and hi == 1.0


def test_shuffled_images_come_from_other_episodes():
    ep = np.array([0, 0, 0, 1, 1, 2])
    j = K.shuffled_images(ep, np.random.default_rng(0))
    assert np.all(ep[j] != ep)


def test_probe_runs_on_the_fixture(tiny_ckpt, demos_dir, tmp_path):
    out = tmp_path / "knn"
    run("knn_probe.py", "--backbones", f"{tiny_ckpt},{tiny_ckpt}", "--data", demos_dir, "--out", str(out),
        "--frame-stride", "10", "--n-boot", "200", "--k", "5")
    m = json.load(open(out / "metrics.json"))
    r = m["backbones"][tiny_ckpt]
    assert r["layer"] == 3 and m["query_episodes"] > 0 and m["memory_frames"] > 0
    for lab in ("phase", "position"):
        for key in ("accuracy", "image_shuffled"):
            acc, lo, hi = r["labels"][lab][key]
            assert 0 <= lo <= acc <= hi <= 1
        assert 0 < m["labels"][lab]["chance"] <= 1 and 0 <= m["labels"][lab]["majority"][0] <= 1
    assert "| backbone | layer | label |" in (out / "results.md").read_text()
    # the same backbone twice: every query gets the same answer, so the paired change is exactly zero
    (p,) = m["paired"]
    assert (p["later"], p["earlier"]) == (tiny_ckpt, tiny_ckpt)
    assert all(v == [0.0, 0.0, 0.0] for r in p["labels"].values() for v in r.values())
    assert "| change | label |" in (out / "results.md").read_text()


def test_pairs_default_to_the_chain_and_bad_pairs_are_one_line_errors():
    assert K.parse_pairs("", 3) == [(1, 0), (2, 1)] and K.parse_pairs("2-0, 3-1", 4) == [(2, 0), (3, 1)]
    for pairs in ("1-2-3", "a-b", "3-0", "1-1"):
        with pytest.raises(SystemExit, match="--pairs"):
            K.check(K.parse_config(["--backbones", "a,b,c", "--pairs", pairs]))


def test_bad_flags_are_one_line_errors():
    for argv, msg in [(["--labels", "colour"], "--labels"), (["--pool", "max"], "--pool"), (["--k", "0"], "--k")]:
        with pytest.raises(SystemExit) as e:
            K.check(K.parse_config(argv))
        assert str(e.value).startswith("knn_probe.py:") and msg in str(e.value)
