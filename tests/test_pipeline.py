"""End to end at the smallest setting, in scripts/pipeline.sh's layout: demos (2 per task) → fast_tokenizer →
sft (the conftest fixtures) → grpo → vla_train on the SFT backbone (fixture) and on the GRPO backbone →
eval_libero.py with 1 trial for both and the expert → scripts/summary.py's table. Then ablate.py --preset smoke
for 1 seed, 3 variants and one layout, run twice: the second run must skip everything."""
import json
import os

from conftest import run


def test_pipeline_end_to_end(demos_dir, fast_dir, tiny_ckpt, tiny_vla, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name, d in {"demos": demos_dir, "fast": fast_dir, "sft": tiny_ckpt, "vla_sft": tiny_vla}.items():
        os.symlink(d, out / name)                 # the fixtures ran those stages with the same scripts
    run("grpo.py", "--init", str(out / "sft"), "--out", str(out / "grpo"), "--steps", "1", "--rollout-batch", "2",
        "--update-batch", "2", "--group", "2", "--max-new-tokens", "8", "--eval-prompts", "2")
    run("vla_train.py", "--backbone", str(out / "grpo"), "--data", str(out / "demos"), "--out", str(out / "vla"),
        "--steps", "5", "--frame-stride", "20", "--val-every", "0", "--d-model", "32", "--n-layers", "1")
    ev = ["--suite", "spatial,goal", "--tasks", "0", "--trials-per-task", "1", "--num-envs", "2"]
    for policy, name in [(out / "vla_sft", "eval_sft"), (out / "vla", "eval")]:        # VLAs: 10 steps suffice here
        run("eval_libero.py", "--policy", str(policy), "--out", str(out / name), *ev, "--max-steps", "10")
    run("eval_libero.py", "--policy", "expert", "--out", str(out / "eval_expert"), *ev)   # the expert needs its full episode
    run("eval_libero.py", "--policy", "replay", "--data", str(out / "demos"), "--out", str(out / "eval_replay"), *ev)
    vcfg = json.load(open(out / "vla" / "vla_config.json"))
    assert vcfg["backbone"] == os.path.abspath(out / "grpo")
    for name in ("eval_sft", "eval", "eval_expert", "eval_replay"):
        r = json.load(open(out / name / "results.json"))
        assert set(r["suites"]) == {"spatial", "goal"} and all(v["n"] == 1 for v in r["suites"].values())
    assert json.load(open(out / "eval_expert" / "metrics.json"))["average"] == 1.0     # the ceiling: a sanity check

    p = run("scripts/summary.py", "--root", str(out), "--out", str(out / "summary.md"))
    table = p.stdout
    for row in ("| VLA (SFT) | ", "| VLA (SFT+GRPO) | ", "| replay (floor) | ", "| expert | 100.0% ["):
        assert row in table, table
    assert "| policy | spatial | goal | all suites (pooled) |" in table
    assert "vla (SFT): held-out action L1" in table and "vla (SFT+GRPO): held-out action L1" in table
    assert "grpo:  prefix r_a" in table and "change from SFT" in table and "demos: " in table
    assert "–" not in table.split("## Stage")[1]                     # every stage wrote its figures
    assert (out / "summary.md").read_text() == table.rstrip("\n") + "\n"


def test_ablate_smoke_runs_then_resumes(demos_dir, tiny_ckpt, tmp_path):
    out, refs = tmp_path / "ablate", tmp_path / "calibration"
    ref = {"average": 0.5, "suites": {"spatial": {"success": 0.5, "successes": 1, "n": 2}}}
    for p in ("replay", "oracle"):                                 # bench/calibration.py's files for the layout
        (refs / "libero" / f"eval-{p}").mkdir(parents=True)
        (refs / "libero" / f"eval-{p}" / "results.json").write_text(json.dumps(ref))
    args = ["ablate.py", "--preset", "smoke", "--seeds", "0", "--variants", "base,sft,ecot", "--base", tiny_ckpt,
            "--layouts", "libero", "--layout-data", f"libero={demos_dir}", "--references", str(refs),
            "--out", str(out), "--no-plot"]
    first = run(*args).stdout
    assert first.count(": python ") == 8                           # sft, ecot, 3 VLAs, 3 evaluations
    res = json.load(open(out / "results.json"))
    assert set(res["per_seed"]["libero"]) == {"base", "sft", "ecot"}
    for v in ("base", "sft", "ecot"):
        f = res["per_seed"]["libero"][v]["0"]
        assert 0 <= f["success"] <= 1 and f["val_l1"] > 0 and f["backbone_prefix"] is not None and f["n"] == 1
    assert res["per_seed"]["libero"]["base"]["0"]["backbone_prefix"] == \
        json.load(open(out / "runs" / "sft" / "seed0" / "metrics.json"))["before"]["reason/prefix"][0]
    assert res["comparisons"]["libero"]["sft - base"][3] == 1    # one seed: a Newcombe interval over episodes
    md = (out / "results.md").read_text()
    assert "| sft | " in md and "| ecot | " in md and "| 0 |" in md and "| sft − base | Tab. 2" in md
    assert "replay **50.0% [" in md and "blind **–**" in md and "| – / 50.0% |" in md
    # the ECoT control trained on exactly the episodes the SFT run reserved for GRPO
    st_sft = json.load(open(out / "runs" / "sft" / "seed0" / "stage2.json"))
    st_ecot = json.load(open(out / "runs" / "ecot" / "seed0" / "stage2.json"))
    m_ecot = json.load(open(out / "runs" / "ecot" / "seed0" / "metrics.json"))
    lengths = {i: json.loads(l)["length"] for i, l in enumerate(open(os.path.join(demos_dir, "episodes.jsonl")))}
    assert st_ecot["episodes"] == st_sft["episodes"] and m_ecot["config"]["episodes"] == "stage2"
    assert m_ecot["train_samples"] == sum(lengths[e] for e in st_sft["episodes"])
    second = run(*args).stdout                                     # resumable: every run is found done
    assert second.count("done already, skipped") == 8 and "python sft.py" not in second
