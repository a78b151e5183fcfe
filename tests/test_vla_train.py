"""vla_train.py: feature caching is exact, the frozen backbone gets no gradient, a fine-tuned one does and is
saved, --resume replays a run exactly, the Policy, torchrun."""
import copy
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import vla_train as V
from conftest import ENV, ROOT, run
from data.demos import DemoDataset
from model import load_backbone

TINY = ("--frame-stride", "20", "--val-every", "0", "--d-model", "32", "--n-layers", "1")


def train_tiny(tiny_ckpt, demos_dir, out, *flags):
    return run("vla_train.py", "--backbone", tiny_ckpt, "--data", demos_dir, "--out", str(out), *TINY, *flags)


@pytest.fixture(scope="module")
def finetuned(tiny_ckpt, demos_dir, tmp_path_factory):
    """A 4-step --finetune-backbone run that left its step-2 resume state behind."""
    out = tmp_path_factory.mktemp("ft") / "vla"
    train_tiny(tiny_ckpt, demos_dir, out, "--finetune-backbone", "--steps", "4", "--save-every", "2")
    return out


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


def test_encode_skips_the_blocks_above_the_layer_and_gives_the_full_models_hidden_states(setup):
    cfg, ns, model, proc, rows = setup
    x = V.prepare(proc, rows["img"][:3], None, rows["text"][:3], "cpu")
    n_blocks = len(model.model.language_model.layers)
    for layer in (1, n_blocks - 1, n_blocks):                # n_blocks: the top, where nothing is skipped
        fast, _ = V.encode(model, proc, rows["img"][:3], None, rows["text"][:3], layer, "cpu")   # first: no trace left
        with torch.no_grad():
            full = model.model(**x, output_hidden_states=True).hidden_states[layer]
        torch.testing.assert_close(fast, full, rtol=0, atol=0)
    assert len(model.model.language_model.layers) == n_blocks and not isinstance(model.model.language_model.norm, torch.nn.Identity)


def test_frozen_backbone_gets_no_gradient(setup):
    cfg, ns, model, proc, rows = setup
    h, m = V.encode(model, proc, rows["img"][:2], None, rows["text"][:2], 2, "cpu")
    head = V.DiffusionHead(V.HeadConfig(action_dim=7, horizon=cfg.horizon, proprio_dim=8, cond_dim=h.shape[-1]))
    V.VLA(head)(rows["chunk"][:2], rows["proprio"][:2], h, m).backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None for p in head.parameters())


def test_finetuned_backbone_gets_gradient_below_the_read_layer(setup):
    cfg, ns, model, proc, rows = setup
    bb = copy.deepcopy(model)
    layer = V.default_layer(bb)
    V.unfreeze_below(bb, layer)
    head = V.DiffusionHead(V.HeadConfig(action_dim=7, horizon=cfg.horizon, proprio_dim=8,
                                        cond_dim=bb.config.text_config.hidden_size))
    x = V.prepare(proc, rows["img"][:2], None, rows["text"][:2], "cpu")
    V.VLA(head, bb, layer)(rows["chunk"][:2], rows["proprio"][:2], inputs=x).backward()
    trainable = [p for p in bb.parameters() if p.requires_grad]
    assert any(p is bb.model.visual.patch_embed.proj.weight for p in trainable)
    assert all(p.grad is not None for p in trainable)            # DDP needs a gradient for every trainable one
    assert sum(float(p.grad.abs().sum()) for p in trainable) > 0
    frozen = list(bb.model.language_model.layers[layer:].parameters())
    assert frozen and all(not p.requires_grad and p.grad is None for p in frozen)


def test_finetuned_checkpoint_holds_the_trained_backbone(finetuned, tiny_ckpt, demos_dir):
    vcfg = json.load(open(finetuned / "vla_config.json"))
    assert vcfg["backbone"] == "backbone" and vcfg["finetuned_backbone"]
    pol = V.Policy.load(str(finetuned))
    ref, *_ = load_backbone(tiny_ckpt, need_actions=False)
    old = dict(ref.named_parameters())
    changed = {n for n, p in pol.model.named_parameters() if not torch.equal(p, old[n])}
    assert any("visual." in n for n in changed) and any(".layers.0." in n for n in changed)
    assert not any(f".layers.{i}." in n for n in changed for i in range(vcfg["layer"], ref.config.text_config.num_hidden_layers))
    # Policy.load reproduces the run's own validation numbers: it reads the fine-tuned weights, not --backbone's
    m = json.load(open(finetuned / "metrics.json"))
    cfg = V.Config(backbone=tiny_ckpt, data=demos_dir, frame_stride=20)
    rows = V.build_data(DemoDataset(demos_dir), "val", cfg, vcfg["norm"])
    c, mask = V.cache_features(pol.model, pol.proc, rows, cfg, vcfg["layer"], "cpu")
    r = V.validate(pol.head, c, mask, rows["proprio"], rows["chunk"], vcfg["ddim_steps"], torch.zeros(1, 1, 7))
    assert r["val_l1"] == pytest.approx(m["val_l1"], abs=1e-6) and r["val_loss"] == pytest.approx(m["val_loss"], abs=1e-6)


@pytest.mark.parametrize("finetune", [False, True])
def test_resume_replays_the_run_exactly(request, tiny_ckpt, demos_dir, tmp_path, finetune):
    flags = ["--steps", "4", "--save-every", "2"] + (["--finetune-backbone"] if finetune else [])
    first = request.getfixturevalue("finetuned") if finetune else tmp_path / "a"
    if not finetune:
        train_tiny(tiny_ckpt, demos_dir, first, *flags)
    again = tmp_path / "b"
    shutil.copytree(first, again)                                # its resume/ holds the step-2 state
    p = train_tiny(tiny_ckpt, demos_dir, again, *flags, "--resume")
    assert "resumed at step 2" in p.stdout
    for f in ["head.safetensors"] + (["backbone/model.safetensors"] if finetune else []):
        a, b = load_file(first / f), load_file(again / f)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f


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


@pytest.mark.parametrize("flags", [[], ["--finetune-backbone"]])
def test_two_process_torchrun(tiny_ckpt, demos_dir, tmp_path, flags):
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "vla_train.py",
                        "--backbone", tiny_ckpt, "--data", demos_dir, "--out", str(tmp_path / "v2"), "--steps", "3",
                        "--batch", "8", *TINY, *flags], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "v2" / "head.safetensors").exists()
    assert (tmp_path / "v2" / "backbone" / "model.safetensors").exists() == bool(flags)


# ----------------------------------------------------------------------------- the calibration ladder's heads
def test_oracle_vector_names_the_task_the_hand_and_every_body_by_slot():
    from data.mini_libero import get_benchmark
    world, _ = get_benchmark("goal").get_task(3).scene(0)
    v = V.oracle_vector(world.get_state(), task=2, n_tasks=5)
    assert v.shape == (V.oracle_dim(5),) and v.dtype == np.float32
    assert v[:5].tolist() == [0, 0, 1, 0, 0]                                  # the task one-hot
    np.testing.assert_allclose(v[5:8], 10 * world.eef_pos, rtol=1e-6)         # the hand, in units of 10 cm
    bodies = v[10:].reshape(V.ORACLE_BODIES, 10)
    n = len(world.bodies)
    np.testing.assert_allclose(bodies[:n, :3], 10 * world.pos, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bodies[:n, 3:6], 10 * (world.pos - world.eef_pos), rtol=1e-5, atol=1e-6)
    assert not bodies[n:].any() and not bodies[:n, 9].any()                    # empty slots; nothing held yet
    world.held = 4
    assert V.oracle_vector(world.get_state(), 2, 5)[10:].reshape(-1, 10)[4, 9] == 1


@pytest.mark.parametrize("features", ["oracle", "blind"])
def test_ladder_heads_train_and_run_through_eval(features, tiny_ckpt, demos_dir, tmp_path):
    """The ceiling (privileged state, no backbone) and the blind reference (blank image) train like the VLA and
    evaluate through eval_libero.py's one protocol without rendering a frame."""
    from eval_libero import Config, run_eval
    out = tmp_path / features
    train_tiny(tiny_ckpt, demos_dir, out, "--features", features, "--steps", "5")
    vcfg = json.load(open(out / "vla_config.json"))
    assert vcfg["features"] == features and vcfg["layout"] == "libero" and len(vcfg["tasks"]) == 20
    pol = V.Policy.load(str(out))
    assert not pol.uses_images and pol.episodic == (features == "oracle") and (pol.model is None) == (features == "oracle")
    res = run_eval(Config(suite="goal", tasks="0,7", trials_per_task=1, max_steps=10, out=str(tmp_path / "ev")), policy=pol)
    assert res["suites"]["goal"]["n"] == 2 and res["layout"] == "libero"
    assert json.load(open(tmp_path / "ev" / "metrics.json"))["env_steps_this_run"] == 2 * (10 + 10)   # settle + policy
    if features == "blind":                               # the features depend on the prompt alone: encoded once each
        assert sorted(pol._blind) == sorted(t for t in vcfg["tasks"] if t in {res["suites"]["goal"]["tasks"][0]["instruction"],
                                                                               res["suites"]["goal"]["tasks"][1]["instruction"]})


def test_a_wrong_features_name_is_a_one_line_error(tiny_ckpt, demos_dir, tmp_path):
    p = subprocess.run([sys.executable, "vla_train.py", "--backbone", tiny_ckpt, "--data", demos_dir, "--out",
                        str(tmp_path / "x"), "--features", "xray"], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert p.returncode != 0 and p.stderr.strip().splitlines()[-1] == \
        "vla_train.py: --features 'xray': expected backbone, blind or oracle"
    assert not (tmp_path / "x").exists()


def test_image_dropout_swaps_whole_rows_for_their_blank_image_features():
    cond, mask = torch.randn(3, 4, 2), torch.ones(3, 4, dtype=torch.bool)
    mask[0, 0] = False                                                # a shorter prompt, left-padded
    blind, bmask = torch.randn(3, 5, 2), torch.ones(3, 5, dtype=torch.bool)
    c, m = V.drop_images(cond, mask, blind, bmask, torch.tensor([True, False, True]))
    assert c.shape == (3, 5, 2) and m.shape == (3, 5)
    assert torch.equal(c[0], blind[0]) and torch.equal(m[2], bmask[2])
    assert torch.equal(c[1, 1:], cond[1]) and m[1].tolist() == [False, True, True, True, True]   # kept, padded left


def test_image_dropout_trains_and_needs_a_frozen_backbone(tiny_ckpt, demos_dir, tmp_path):
    train_tiny(tiny_ckpt, demos_dir, tmp_path / "vla", "--image-dropout", "0.5", "--steps", "3")
    assert json.load(open(tmp_path / "vla" / "vla_config.json"))["features"] == "backbone"
    p = subprocess.run([sys.executable, "vla_train.py", "--backbone", tiny_ckpt, "--data", demos_dir, "--out",
                        str(tmp_path / "x"), "--image-dropout", "0.5", "--features", "blind"], cwd=ROOT, env=ENV,
                       capture_output=True, text=True)
    assert p.returncode != 0 and "--image-dropout" in p.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "x").exists()
