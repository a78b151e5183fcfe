"""ablate.py's pure pieces: flag merging, run sharing between variants and layouts, the intervals over seeds and
over episodes, the paired comparisons, the plan, the tables;
and sft.py --episodes stage2 (the ECoT-style control's one flag). The smoke run is in test_pipeline.py."""
import json
import math
import sys

import pytest

import ablate as A
import sft


def test_merge_flags_later_wins_in_place():
    assert A.merge_flags("--group 2 --steps 1 --no-eval", "--group 8") == ["--group", "8", "--steps", "1", "--no-eval"]
    assert A.merge_flags("", "") == []
    with pytest.raises(SystemExit):
        A.merge_flags("steps 3")


def test_run_key_names_only_real_changes():
    preset = "--steps 20 --group 8"
    assert A.run_key("grpo", preset, "") == "grpo"
    assert A.run_key("grpo", preset, "--group 8") == "grpo"                 # same effective flags: shared run
    assert A.run_key("grpo", preset, "--group 2") == "grpo_group-2"
    assert A.run_key("grpo", preset, "--reward l1") == "grpo_reward-l1"
    assert A.run_key("grpo", preset, "--format-weight 1.0") == "grpo_format-weight-1.0"


def test_mean_ci_t_hand_case():
    m, lo, hi, n = A.mean_ci_t([1.0, 2.0, 3.0])           # sd 1, t(2) = 4.303: half-width 4.303 / sqrt(3)
    assert (m, n) == (2.0, 3) and math.isclose(hi - m, 4.303 / math.sqrt(3), rel_tol=1e-9) and math.isclose(m - lo, hi - m)
    assert A.mean_ci_t([0.5]) == [0.5, 0.5, 0.5, 1]
    assert A.mean_ci_t([None, 0.25, float("nan"), 0.25]) == [0.25, 0.25, 0.25, 2]
    assert A.mean_ci_t([None])[3] == 0


def test_plan_shares_runs_and_chains_backbones(tmp_path):
    cfg = A.Config(out=str(tmp_path), preset="small", base="B", layout_data="libero=D1,libero-x3=D3")
    plan = lambda v, layout="libero": A.variant_plan(cfg, v, 1, layout)
    assert [r.out for r in plan("group-8")] == [r.out for r in plan("grpo")]     # grpo's default G is 8
    assert [r.key for r in plan("base")] == ["vla-base", "eval-vla-base"]
    assert plan("base")[0].cmd[:5] == ["vla_train.py", "--backbone", "B", "--data", "D1"]
    sft_run, ecot, vla, ev = plan("ecot")
    assert sft_run.cmd[sft_run.cmd.index("--data") + 1] == "D1"                   # backbones: the first layout's demos
    assert ecot.cmd[:5] == ["sft.py", "--model", sft_run.out, "--episodes", "stage2"] and "reason=1" in ecot.cmd
    assert vla.cmd[2] == ecot.out and ev.cmd[2] == vla.out and "--seed" in vla.cmd
    x3 = plan("ecot", "libero-x3")                                                # same backbones, the layout's own head
    assert [r.out for r in x3[:2]] == [sft_run.out, ecot.out] and x3[2].out != vla.out
    assert x3[2].cmd[x3[2].cmd.index("--data") + 1] == "D3" and x3[3].cmd[x3[3].cmd.index("--layout") + 1] == "libero-x3"
    for v, target in (("grpo-language", "choice"), ("grpo-visual", "trace")):    # Tab. 6: same SFT, other reward
        s, g = plan(v)[:2]
        assert s.out == sft_run.out and g.cmd[g.cmd.index("--reward") + 1] == target and g.out != plan("grpo")[1].out
    assert "choice=" in " ".join(sft_run.cmd) and "trace=" in " ".join(sft_run.cmd)   # SFT teaches their formats
    reasoning = plan("vla-reasoning")
    assert reasoning[1].out == plan("grpo")[1].out and "--prompt" in reasoning[2].cmd   # same GRPO, other VLA
    assert all(r.cmd[-1] == "--resume" for v in A.VARIANTS for r in plan(v))
    assert A.demos_runs(cfg) == [] and [r.out for r in A.demos_runs(A.Config(out="O", layouts="libero"))] == ["O/demos/libero"]


def test_ecot_sees_as_many_examples_as_grpo_prompts():
    import grpo
    g, e = grpo.Config(), A.flag_dict(A.PRESETS["small"]["ecot"])
    assert set(A.flag_dict(A.PRESETS["small"]["grpo"])) <= {"--group"} and int(e["--steps"][0]) * int(e["--global-batch"][0]) == g.steps * g.rollout_batch


def test_bad_variant_and_seeds_are_one_line_errors(tmp_path):
    for argv, msg in [(["--variants", "grpo,nope"], "nope"), (["--seeds", "a,b"], "--seeds"), (["--preset", "huge"], "--preset"),
                      (["--layout-data", "libero"], "--layout-data"), (["--layouts", ","], "--layouts")]:
        with pytest.raises(SystemExit) as e:
            A.main(A.parse_config(["--out", str(tmp_path), "--dry-run", *argv]))
        assert str(e.value).startswith("ablate.py:") and msg in str(e.value)


def test_newcombe_and_paired_comparisons():
    d, lo, hi = A.newcombe(30, 40, 20, 40)                    # 0.75 − 0.5: Newcombe's interval sits inside ±1
    assert math.isclose(d, 0.25) and 0.0 < lo < d < hi < 0.5
    d0, lo0, hi0 = A.newcombe(20, 40, 20, 40)
    assert d0 == 0 and math.isclose(-lo0, hi0)
    one = {"a": {0: {"success": 0.75, "k": 30, "n": 40}}, "b": {0: {"success": 0.5, "k": 20, "n": 40}}}
    assert A.compare(one, "a", "b") == [d, lo, hi, 1]
    three = {"a": {s: {"success": x, "k": int(40 * x), "n": 40} for s, x in enumerate([0.6, 0.7, 0.8])},
             "b": {s: {"success": x, "k": int(40 * x), "n": 40} for s, x in enumerate([0.5, 0.5, 0.6])}}
    assert A.compare(three, "a", "b") == pytest.approx(A.mean_ci_t([0.1, 0.2, 0.2]))   # paired by seed
    three["b"][2]["success"] = None                 # an unfinished seed drops out; two seeds pool their episodes
    assert A.compare(three, "a", "b") == pytest.approx([*A.newcombe(52, 80, 40, 80), 2])
    assert A.compare(three, "a", "nothing") is None


def test_summarise_gives_one_seed_a_wilson_interval():
    f = {"success": 0.5, "k": 20, "n": 40, "success/goal": 0.25, "n/goal": 20, "val_l1": 0.1}
    s = A.summarise({"sft": {0: f, 1: {"success": None}}})["sft"]
    assert s["pooled"] and not A.summarise({"sft": {i: f for i in range(3)}})["sft"]["pooled"]
    two = A.summarise({"sft": {0: f, 1: {**f, "success": 0.75, "k": 30}}})["sft"]["success"]   # 50 of 80 pooled
    assert two[0] == 0.625 and two[3] == 2 and two[1:3] == pytest.approx(list(A.wilson_interval(50, 80)))
    assert s["seeds"] == [0] and s["success"][0] == 0.5 and s["success"][1] < 0.5 < s["success"][2] and s["success"][3] == 1
    assert s["success/goal"][1] < 0.25 < s["success/goal"][2] and s["success/goal"][2] - s["success/goal"][1] > \
        s["success"][2] - s["success"][1]                                   # 20 episodes: wider than over 40
    assert s["val_l1"] == [0.1, 0.1, 0.1, 1] and "k" not in s and "n/goal" not in s


def test_results_markdown_lists_seeds_references_and_settings(tmp_path):
    cfg = A.Config(out=str(tmp_path), preset="smoke")
    per_seed = {"sft": {s: {"success": x, "success/spatial": x, "k": int(40 * x), "n": 40} for s, x in enumerate([0.1, 0.2, 0.3])},
                "base": {s: {"success": 0.1, "k": 4, "n": 40} for s in range(3)}}
    refs = {"blind": {"success": 0.25, "k": 10, "n": 40}, "oracle": {"success": 0.5, "k": 20, "n": 40}}
    md = A.results_markdown(cfg, {"libero": (A.summarise(per_seed), refs, per_seed)},
                            {"sft": A.variant_plan(cfg, "sft", 0, "libero")})
    assert "| sft | 20.0% [" in md and "| 0,1,2 |" in md and "--stage2-frac 0.3" in md and "`vla-sft`" in md
    assert "blind **25.0% [" in md and "| 25.0% / 50.0% |" in md and "replay **–**" in md
    assert "| sft − base | Tab. 2: +4.8 | +10.0% [" in md


def test_sft_reserved_episodes(tmp_path):
    (tmp_path / "stage2.json").write_text(json.dumps({"demos": str(tmp_path / "demos"), "episodes": [3, 7]}))
    assert sft.reserved_episodes(str(tmp_path), str(tmp_path / "demos")) == [3, 7]
    with pytest.raises(SystemExit, match="not of --data"):
        sft.reserved_episodes(str(tmp_path), str(tmp_path / "other"))
    with pytest.raises(SystemExit, match="needs"):
        sft.reserved_episodes(str(tmp_path / "nothing"), str(tmp_path / "demos"))


PER_SEED = {"sft": {0: {"success": 0.2, "k": 8, "n": 40}}, "grpo": {0: {"success": 0.3, "k": 12, "n": 40}}}
BY_LAYOUT = {"libero": (A.summarise(PER_SEED), {"oracle": {"success": 0.6, "k": 24, "n": 40}}, PER_SEED),
             "libero-x3": (A.summarise(PER_SEED), {}, PER_SEED)}


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image
    assert A.plot(BY_LAYOUT, str(tmp_path / "r.png"))
    assert Image.open(tmp_path / "r.png").size[0] > 300


def test_plot_without_matplotlib_is_one_line_and_no_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)          # import matplotlib now raises ImportError
    assert not A.plot(BY_LAYOUT, str(tmp_path / "r.png"))
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "pip install -r requirements-plot.txt" in out and not (tmp_path / "r.png").exists()


def test_train_figures_read_a_grpo_runs_rounds(tmp_path):
    rows = [{"round": i + 1, "r_a": i / 10, "zero_spread": 0.5 if i % 2 else 0.25} for i in range(8)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    f = A.train_figures(str(tmp_path), k=3)
    assert f == pytest.approx({"train_r_a_first": 0.1, "train_r_a_last": 0.6, "train_zero_spread": 0.375})
    assert A.train_figures(str(tmp_path / "none")) == {}
    (tmp_path / "metrics.jsonl").write_text('{"round": 1, "r_a"')                # cut short: no figures, no crash
    assert A.train_figures(str(tmp_path)) == {}
