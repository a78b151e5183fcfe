"""The paper's two other RL targets (Tab. 6): the multiple-choice movement question (language) and the gripper's
waypoints in the image (visual). Their rewards are pure functions of the completion's text: each edge case is
defined here, none raises, every reward lies in [0, 1]; a demonstration's own answer scores 1; sft.py scores them
and grpo.py runs on them."""
import json

import numpy as np
import pytest

import grpo
import samples as sm
import sft
from data import prompts
from data.demos import DemoDataset
from fast_tokenizer import FastTokenizer


def ans(x):
    return f"<think>look</think><answer>{x}</answer>"


# ----------------------------------------------------------------------------- pure rewards
@pytest.mark.parametrize("text,r", [
    (ans("B"), 1.0), (ans(" B. "), 1.0), (ans("B."), 1.0),               # spaces and a final period are allowed
    (ans("C"), 0.0), (ans("B C"), 0.0), (ans("b"), 0.0), (ans("B) move left"), 0.0), (ans(""), 0.0),
    ("B", 0.0), ("<answer>B", 0.0), ("", 0.0),                            # no answer block
    (ans("B") + ans("C"), 1.0), (ans("C") + ans("B"), 0.0),               # the first block is the answer
])
def test_choice_reward(text, r):
    assert sm.choice_reward(text, "B") == r


T = "(10, 10) (20, 10) (30, 10)"


@pytest.mark.parametrize("got,r", [
    ("(10, 10) (20, 10) (30, 10)", 1.0),
    ("(10,10)(20,10)(30,10)", 1.0),                                      # spacing does not matter
    ("(10, 10) (20, 10) (30, 10) (90, 90)", 1.0),                        # points beyond n are ignored
    ("(10, 10) (20, 10)", 2 / 3),                                         # a missing point costs 1
    ("(10, 15) (20, 10) (30, 10)", 2 / 3),                                # 5 units off: that point counts in full
    ("(10, 12) (20, 10) (30, 10)", 1 - 0.4 / 3),                          # 2 units off: 2/5 of a point
    ("(99, 99) (99, 99) (99, 99)", 0.0),
    ("", 0.0), ("no points", 0.0), ("(1, x)", 0.0),
])
def test_trace_reward(got, r):
    assert sm.trace_reward(ans(got), T) == pytest.approx(r)
    assert sm.trace_reward(got, T) == 0.0                                  # without an answer block: 0


def test_rewards_never_raise_and_stay_in_range():
    rng = np.random.default_rng(0)
    pieces = ["<think>", "</think>", "<answer>", "</answer>", "(", ")", ",", " ", "A", "B", "12", "-3", "x", "\n"]
    for _ in range(500):
        text = "".join(rng.choice(pieces, int(rng.integers(0, 20))))
        target = "".join(rng.choice(pieces, int(rng.integers(0, 12))))
        assert 0.0 <= sm.choice_reward(text, "A") <= 1.0
        assert 0.0 <= sm.trace_reward(text, T) <= 1.0 and 0.0 <= sm.trace_reward(text, target) <= 1.0
        for kind in ("choice", "trace"):
            r, r_f, r_a = grpo.reward([], text, bool(rng.integers(2)), "A" if kind == "choice" else T, {}, None, kind=kind)
            assert 0.0 <= r_a <= 1.0 and r_f in (0.0, 1.0) and 0.0 <= r <= 1.0


def test_grpo_reward_combines_format_and_target():
    assert grpo.reward([], ans("A"), True, "A", {}, kind="choice") == (1.0, 1.0, 1.0)
    assert grpo.reward([], ans("A"), False, "A", {}, kind="choice") == (0.5, 0.0, 1.0)    # truncated: no format
    assert grpo.reward([], "A", True, "A", {}, kind="choice") == (0.0, 0.0, 0.0)
    assert grpo.reward([], ans(T), True, T, {}, kind="trace") == (1.0, 1.0, 1.0)


# ----------------------------------------------------------------------------- samples
@pytest.fixture(scope="module")
def built(demos_dir):
    ds = DemoDataset(demos_dir)
    fast = FastTokenizer.fit(ds.action_chunks(5), vocab_size=256)
    return ds, fast, sm.build_samples(ds, ds.indices("train")[:3], fast, {"choice": 1.0, "trace": 1.0}, 0)


def test_movement_options_are_four_distinct_and_one_is_true():
    rng = np.random.default_rng(0)
    for signs in [np.array(s) for s in ([0, 0, 0], [1, -1, 0], [-1, 1, 1], [0, 0, -1])]:
        for grip in prompts.GRIP_PHRASES:
            options, at = prompts.movement_options(signs, grip, rng)
            assert len(set(options)) == 4 and options[at] == f"move {prompts.direction_words(signs)}, {grip}"


def test_samples_answer_their_own_question(built):
    ds, fast, samples = built
    kinds = {s.kind for s in samples}
    assert kinds == {"choice", "trace"}
    for s in samples:
        assert sft.ANSWER_RE[s.kind].match(s.answer) and s.answer.endswith(f"<answer>{s.target}</answer>")
        if s.kind == "choice":
            assert s.target in prompts.LETTERS and f"\n{s.target}. move " in s.prompt
            assert sm.choice_reward(s.answer, s.target) == 1.0
            assert all(sm.choice_reward(s.answer, x) == 0.0 for x in prompts.LETTERS if x != s.target)
        else:
            pts = sm.POINT_RE.findall(s.target)
            assert len(pts) == fast.time_horizon and all(0 <= int(c) < prompts.TRACE_GRID for p in pts for c in p)
            assert sm.trace_reward(s.answer, s.target) == 1.0


def test_the_trace_follows_the_gripper(built):
    """The waypoints are the gripper's next positions: the first one is where the next frame's caption puts it."""
    ds, fast, samples = built
    s = next(x for x in samples if x.kind == "trace" and x.t + 1 < len(ds.load(x.episode, ["sim_state"])["sim_state"]))
    world, _ = sm.task_worlds(ds)[(ds.episodes[s.episode]["suite"], ds.episodes[s.episode]["task_id"])]
    world.set_state(ds.load(s.episode, ["sim_state"])["sim_state"][s.t + 1])
    assert s.target.split(") ")[0] + ")" == prompts.trace_text(np.array([world.eef_pos]))


def test_sft_scores_the_targets(built):
    ds, fast, samples = built
    for s in samples[:6]:
        row = sft.score(s, [], s.answer + "<|im_end|>", {}, fast)
        assert row == {"format": 1.0, "accuracy": 1.0}
        assert sft.score(s, [], "nonsense", {}, fast) == {"format": 0.0, "accuracy": 0.0}
