"""ablate.py's pure pieces: flag merging, run sharing between variants, the interval over seeds, the plan;
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
    cfg = A.Config(out=str(tmp_path), preset="small", data="D", base="B")
    plan = lambda v: A.variant_plan(cfg, v, 1)
    assert [r.out for r in plan("group-8")] == [r.out for r in plan("grpo")]     # the small preset's G is 8
    assert [r.key for r in plan("base")] == ["vla-base", "eval-vla-base"]
    assert plan("base")[0].cmd[:3] == ["vla_train.py", "--backbone", "B"]
    sft_run, ecot, vla, ev = plan("ecot")
    assert ecot.cmd[:5] == ["sft.py", "--model", sft_run.out, "--episodes", "stage2"] and "reason=1" in ecot.cmd
    assert vla.cmd[2] == ecot.out and ev.cmd[2] == vla.out and "--seed" in vla.cmd
    l1 = plan("reward-l1")[1]
    assert l1.cmd[l1.cmd.index("--reward") + 1] == "l1" and l1.out != plan("grpo")[1].out
    reasoning = plan("vla-reasoning")
    assert reasoning[1].out == plan("grpo")[1].out and "--prompt" in reasoning[2].cmd   # same GRPO, other VLA
    assert all(r.cmd[-1] == "--resume" for v in A.VARIANTS for r in plan(v))


def test_bad_variant_and_seeds_are_one_line_errors(tmp_path):
    for argv, msg in [(["--variants", "grpo,nope"], "nope"), (["--seeds", "a,b"], "--seeds"), (["--preset", "huge"], "--preset")]:
        with pytest.raises(SystemExit) as e:
            A.main(A.parse_config(["--out", str(tmp_path), "--dry-run", *argv]))
        assert str(e.value).startswith("ablate.py:") and msg in str(e.value)


def test_results_markdown_lists_seeds_and_settings(tmp_path):
    cfg = A.Config(out=str(tmp_path), preset="smoke")
    summary = {"sft": {"success": A.mean_ci_t([0.1, 0.2, 0.3]), "val_l1": A.mean_ci_t([0.5])}}
    md = A.results_markdown(cfg, summary, {"sft": [0, 1, 2]}, {"sft": A.variant_plan(cfg, "sft", 0)})
    assert "| sft | 0.200 [" in md and "| 0,1,2 |" in md and "--stage2-frac 0.3" in md and "`vla-sft`" in md


def test_sft_reserved_episodes(tmp_path):
    (tmp_path / "stage2.json").write_text(json.dumps({"demos": str(tmp_path / "demos"), "episodes": [3, 7]}))
    assert sft.reserved_episodes(str(tmp_path), str(tmp_path / "demos")) == [3, 7]
    with pytest.raises(SystemExit, match="not of --data"):
        sft.reserved_episodes(str(tmp_path), str(tmp_path / "other"))
    with pytest.raises(SystemExit, match="needs"):
        sft.reserved_episodes(str(tmp_path / "nothing"), str(tmp_path / "demos"))


SUMMARY = {"sft": {"success": [0.2, 0.1, 0.3, 3], "val_l1": [0.5, 0.4, 0.6, 3], "mean_action_l1": [0.7, 0.7, 0.7, 3]},
           "grpo": {"success": [0.3, 0.3, 0.3, 1], "val_l1": [0.4, 0.4, 0.4, 1], "mean_action_l1": [0.7, 0.7, 0.7, 1]}}


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image
    assert A.plot(SUMMARY, str(tmp_path / "r.png"))
    assert Image.open(tmp_path / "r.png").size[0] > 300


def test_plot_without_matplotlib_is_one_line_and_no_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)          # import matplotlib now raises ImportError
    assert not A.plot(SUMMARY, str(tmp_path / "r.png"))
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "pip install -r requirements-plot.txt" in out and not (tmp_path / "r.png").exists()
