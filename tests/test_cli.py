"""Every stage (and knn_probe.py, ablate.py, scripts/summary.py) answers --help (flags generated from its Config)
without touching data or models."""
import subprocess
import sys

import pytest

from conftest import ENV, ROOT

STAGES = ["fast_tokenizer.py", "sft.py", "grpo.py", "diffusion_head.py", "vla_train.py", "eval_libero.py", "serve.py",
          "bench/calibration.py",
          "knn_probe.py", "ablate.py", "scripts/summary.py"]


@pytest.mark.parametrize("stage", STAGES)
def test_stage_help(stage):
    p = subprocess.run([sys.executable, stage, "--help"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "--out" in p.stdout or "--steps" in p.stdout or "--policy" in p.stdout


def test_world_cli_help_lists_its_commands():
    p = subprocess.run([sys.executable, "-m", "data.mini_libero", "--help"], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert p.returncode == 0 and all(c in p.stdout for c in ("demos", "expert", "video", "stats"))
