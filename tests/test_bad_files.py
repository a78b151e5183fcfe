"""Every bad file a user can hand a stage gives a one-line error naming the file and what was expected, a
non-zero exit and no traceback; the stage named in the message is the stage that runs (model.py raises
CheckpointError, data/ raises DatasetError, each stage's main turns either into SystemExit("stage.py: ...") with
config.exits_on_bad_files)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

import model as M
from conftest import ENV, ROOT


def spoil(ckpt, tmp_path, name, how):
    d = tmp_path / "bad"
    shutil.copytree(ckpt, d)
    p = d / name
    if how == "truncate":
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif how == "garbage":
        p.write_text("{ not json")
    elif how == "foreign":                                       # a valid safetensors file of another model
        from safetensors.torch import save_file
        import torch
        save_file({"some.other.weight": torch.zeros(2, 2)}, str(p))
    elif how == "missing_keys":
        p.write_text(json.dumps({"format": json.loads(p.read_text())["format"]}))
    return d


@pytest.mark.parametrize("name,how", [
    ("model.safetensors", "truncate"), ("model.safetensors", "foreign"), ("config.json", "garbage"),
    ("tokenizer.json", "garbage"), ("fast_tokenizer.json", "missing_keys"), ("action_vocab.json", "garbage"),
])
def test_bad_checkpoint_file_is_a_checkpoint_error(tiny_ckpt, tmp_path, name, how):
    d = spoil(tiny_ckpt, tmp_path, name, how)
    with pytest.raises(M.CheckpointError) as e:
        M.load_backbone(str(d))
    msg = str(e.value)
    assert "\n" not in msg and str(d) in msg, msg
    if name in ("model.safetensors", "fast_tokenizer.json", "action_vocab.json"):
        assert name in msg or how == "truncate", msg


@pytest.mark.parametrize("stage,flag", [("grpo.py", "--init"), ("vla_train.py", "--backbone")])
def test_stage_names_itself_for_a_truncated_checkpoint(tiny_ckpt, demos_dir, tmp_path, stage, flag):
    d = spoil(tiny_ckpt, tmp_path, "model.safetensors", "truncate")
    data = ["--data", demos_dir] if stage == "vla_train.py" else []
    p = subprocess.run([sys.executable, stage, flag, str(d), *data, "--out", str(tmp_path / "o")], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{stage}: {d}") and "cannot load" in last, last


def test_sft_fast_tokenizer_without_its_keys(demos_dir, fast_dir, tmp_path):
    bad = tmp_path / "fast.json"
    bad.write_text(json.dumps({"format": "something"}))
    p = subprocess.run([sys.executable, "sft.py", "--model", "tiny", "--data", demos_dir, "--fast", str(bad),
                        "--out", str(tmp_path / "o")], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert p.stderr.strip().splitlines()[-1].startswith(f"sft.py: {bad}"), p.stderr[-500:]


def test_stage2_json_malformed(tiny_ckpt, tmp_path):
    d = spoil(tiny_ckpt, tmp_path, "stage2.json", "garbage")
    p = subprocess.run([sys.executable, "grpo.py", "--init", str(d), "--out", str(tmp_path / "o")], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert p.stderr.strip().splitlines()[-1].startswith(f"grpo.py: {d / 'stage2.json'}: expected"), p.stderr[-500:]


def test_dataset_folder_of_the_wrong_layout(fast_dir, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("not a dataset")
    p = subprocess.run([sys.executable, "vla_train.py", "--backbone", "assets/tiny-vl", "--data", str(tmp_path / "data"),
                        "--out", str(tmp_path / "o")], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert p.stderr.strip().splitlines()[-1].startswith(f"vla_train.py: {tmp_path / 'data'}"), p.stderr[-500:]
