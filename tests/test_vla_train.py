"""vla_train.py: feature caching is exact, the frozen backbone gets no gradient, the Policy, torchrun."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import vla_train as V
from conftest import ENV, ROOT, run
from data.demos import DemoDataset
from sft import load_backbone


@pytest.fixture(scope="module")
def setup(tiny_ckpt, demos_dir):
    cfg = V.Config(backbone=tiny_ckpt, data=demos_dir, frame_stride=25)
    ds = DemoDataset(demos_dir)
    ns = V.norm_stats(ds.stats)
    model, proc, _, _ = load_backbone(tiny_ckpt, need_actions=False)
    model.eval().requires_grad_(False)
    proc.tokenizer.padding_side = "left"
    rows = V.build_data(ds, "val", cfg, ns)
    return cfg, ns, model, proc, rows


def test_cached_features_train_exactly_like_fresh_ones(setup):
    cfg, ns, model, proc, rows = setup
    layer = V.default_layer(model)
    cond, mask = V.cache_features(model, proc, rows, cfg, layer, "cpu", batch=3)
    idx = [0, 2, 5]
    fresh, fmask = V.encode(model, proc, [rows["img"][i] for i in idx], None, [rows["text"][i] for i in idx], layer, "cpu")
    head = V.DiffusionHead(V.HeadConfig(action_dim=7, horizon=cfg.horizon, proprio_dim=8, cond_dim=cond.shape[-1]))
    losses = []
    for c, m in [(cond[idx], mask[idx]), (fresh, fmask)]:
        g = torch.Generator().manual_seed(0)
        losses.append(head.loss(rows["chunk"][idx], rows["proprio"][idx], c.float(), m, generator=g))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    # the cache only adds left padding: the real tokens' features are the fresh ones
    n = int(fmask[0].sum())
    torch.testing.assert_close(cond[idx[0]][mask[idx[0]]], fresh[0][fmask[0]][-n:], rtol=1e-5, atol=1e-5)


def test_frozen_backbone_gets_no_gradient(setup):
    cfg, ns, model, proc, rows = setup
    h, m = V.encode(model, proc, rows["img"][:2], None, rows["text"][:2], 2, "cpu")
    head = V.DiffusionHead(V.HeadConfig(action_dim=7, horizon=cfg.horizon, proprio_dim=8, cond_dim=h.shape[-1]))
    V.VLA(head)(rows["chunk"][:2], rows["proprio"][:2], h, m).backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None for p in head.parameters())


def test_normalisation_round_trip(setup):
    _, ns, *_ = setup
    a = np.random.default_rng(0).uniform(-0.5, 0.5, (4, 10, 7))
    a[..., 6] = 1.0
    back = V.unnormalize_actions(V.normalize_actions(a, ns), ns)
    inside = np.abs(V.normalize_actions(a, ns)) < 1
    np.testing.assert_allclose(back[inside], a[inside], atol=1e-6)


def test_train_then_policy_outputs_env_actions(tiny_ckpt, demos_dir, tmp_path):
    out = tmp_path / "vla"
    run("vla_train.py", "--backbone", tiny_ckpt, "--data", demos_dir, "--out", str(out), "--steps", "5",
        "--frame-stride", "20", "--val-every", "0", "--d-model", "32", "--n-layers", "1")
    m = json.load(open(out / "metrics.json"))
    assert {"val_l1", "mean_action_l1", "val_loss", "train_loss"} <= set(m)
    pol = V.Policy.load(str(out))
    img = np.zeros((2, pol.image_size, pol.image_size, 3), np.uint8)
    a = pol(img, img, np.zeros((2, 8), np.float32), ["put the bowl on the plate", "turn on the stove"])
    assert a.shape == (2, pol.horizon, 7) and np.all(np.isfinite(a)) and set(np.unique(a[..., 6])) <= {-1.0, 1.0}


def test_two_process_torchrun(tiny_ckpt, demos_dir, tmp_path):
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "vla_train.py",
                        "--backbone", tiny_ckpt, "--data", demos_dir, "--out", str(tmp_path / "v2"), "--steps", "3",
                        "--frame-stride", "20", "--val-every", "0", "--batch", "8", "--d-model", "32", "--n-layers", "1"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "v2" / "head.safetensors").exists()
