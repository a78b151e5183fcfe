"""Shared fixtures: a small demo set, a FAST tokenizer fitted on it and a tiny SFT checkpoint, built once per
test session in a temp dir (no network, nothing from the repo's out/)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
ENV = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(*args, timeout=600):
    """Run a project command as a user would; return the completed process (raises with its output on failure)."""
    p = subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


@pytest.fixture(scope="session")
def demos_dir(tmp_path_factory):
    from data.mini_libero import write_demos
    d = str(tmp_path_factory.mktemp("demos") / "demos")
    write_demos(d, ["spatial", "goal"], per_task=2, size=64, workers=1)
    return d


@pytest.fixture(scope="session")
def fast_dir(demos_dir, tmp_path_factory):
    d = str(tmp_path_factory.mktemp("fast"))
    run("fast_tokenizer.py", "--data", demos_dir, "--out", d, "--vocab-size", "512")
    return d


@pytest.fixture(scope="session")
def tiny_ckpt(demos_dir, fast_dir, tmp_path_factory):
    """A 2-step SFT of a freshly built tiny backbone: small, but every file a real checkpoint has."""
    d = str(tmp_path_factory.mktemp("sft") / "ckpt")
    run("sft.py", "--model", "tiny", "--data", demos_dir, "--fast", fast_dir, "--out", d, "--steps", "2",
        "--global-batch", "8", "--micro-batch", "4", "--eval-prompts", "4", "--max-new-tokens", "8",
        "--stage2-frac", "0.3")
    return d


@pytest.fixture(scope="session")
def tiny_vla(tiny_ckpt, demos_dir, tmp_path_factory):
    """A VLA checkpoint (tiny backbone + a 1-block head trained for a few steps): exercises every path."""
    d = str(tmp_path_factory.mktemp("vla") / "vla")
    run("vla_train.py", "--backbone", tiny_ckpt, "--data", demos_dir, "--out", d, "--steps", "5",
        "--frame-stride", "20", "--val-every", "0", "--d-model", "32", "--n-layers", "1")
    return d
