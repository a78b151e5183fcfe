"""sft.py: masking, action vocabulary, save/load, processor, templates, resume, DDP, errors, and grounding."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import model as M
import samples as sm
import sft
from conftest import ENV, ROOT, run
from data.demos import DemoDataset
from fast_tokenizer import FastTokenizer


@pytest.fixture(scope="module")
def loaded(tiny_ckpt, demos_dir):
    model, proc, fast, vocab = M.load_backbone(tiny_ckpt)
    ds = DemoDataset(demos_dir)
    eps = ds.indices("val")[:2]
    samples = {k: sm.build_samples(ds, eps, fast, {k: 1.0}, 0)[:3] for k in ("vqa", "reason", "fast")}
    return model, proc, fast, vocab, samples, sm.Frames(ds, eps)


def batch_of(loaded, kind="reason", with_answer=True):
    model, proc, fast, vocab, samples, frames = loaded
    s = samples[kind]
    return sm.collate(s, [frames(x) for x in s], proc, vocab, with_answer=with_answer)


def test_loss_masks_prompt_and_image_tokens(loaded):
    x = batch_of(loaded)
    labels = x["labels"]
    B, L = labels.shape
    leaf = torch.randn(B, L, 50, requires_grad=True)

    class Fake(torch.nn.Module):                     # logits straight from a leaf: its grad shows what the loss sees
        def forward(self, **kw):
            return type("O", (), {"logits": leaf})()
    y = dict(x)
    y["labels"] = labels.clamp(max=49).masked_fill(labels == -100, -100)
    loss = sft.response_loss(Fake(), y, 1.0)
    loss.backward()
    g = leaf.grad.abs().sum(-1)                      # [B, L]: position t predicts token t+1
    predicts_answer = torch.zeros(B, L, dtype=torch.bool)
    predicts_answer[:, :-1] = labels[:, 1:] != -100
    assert torch.all(g[~predicts_answer] == 0)        # prompt, image and padding positions get no gradient
    assert torch.all(g[predicts_answer] > 0)
    assert (x["mm_token_type_ids"].bool() & (labels != -100)).sum() == 0


def test_forced_prefix_counts_the_leading_action_tokens_predicted(loaded):
    """Teacher-forced r_a: every response token predicted right gives 1; a wrong 2nd action token gives 1/n."""
    vocab = loaded[3]
    x = batch_of(loaded)
    target = x["labels"][:, 1:]
    logits = torch.zeros(*x["labels"].shape, len(loaded[1].tokenizer))
    rows, cols = torch.nonzero(target != -100, as_tuple=True)
    logits[rows, cols, target[rows, cols]] = 1.0                    # position t predicts token t + 1
    acts = torch.nonzero((target[0] >= vocab["act_offset"]) & (target[0] < vocab["act_offset"] + vocab["n_actions"]))[:, 0]
    assert len(acts) >= 2
    logits[0, acts[1]] = 0.0
    logits[0, acts[1], vocab["action_end"]] = 1.0                   # stops one token early

    class Fake(torch.nn.Module):
        device = torch.device("cpu")

        def forward(self, **kw):
            return type("O", (), {"logits": logits})()
    r = sft.forced_prefix(Fake(), x, vocab)
    assert r[0] == 1 / len(acts) and r[1:] == [1.0] * (len(r) - 1)


def test_action_tokens_added_and_mapped_both_ways(loaded):
    model, proc, fast, vocab, _, _ = loaded
    tok = proc.tokenizer
    assert vocab["n_actions"] == fast.vocab_size
    for i in (0, 7, fast.vocab_size - 1):
        tid = tok.convert_tokens_to_ids(f"<act_{i}>")
        assert tid == vocab["act_offset"] + i and tok.convert_ids_to_tokens(tid) == f"<act_{i}>"
    assert tok.convert_tokens_to_ids("<ACTION_START>") == vocab["action_start"]
    ids = tok("<answer><ACTION_START><act_3><act_1><ACTION_END></answer>", add_special_tokens=False)["input_ids"]
    assert M.parse_actions(ids, vocab) == [3, 1]
    assert M.parse_actions(ids[:-2], vocab) is None           # no <ACTION_END>: no actions
    assert model.get_input_embeddings().weight.shape[0] == len(tok)


def test_save_then_from_pretrained_gives_identical_logits(loaded, tmp_path):
    model, proc, fast, vocab, _, _ = loaded
    x = batch_of(loaded)
    x.pop("labels")
    with torch.no_grad():
        a = model(**x).logits
    M.save_checkpoint(model, proc, fast, vocab, str(tmp_path / "ck"), {"metrics.json": {}})
    m2, p2, f2, v2 = M.load_backbone(str(tmp_path / "ck"))
    with torch.no_grad():
        b = m2(**x).logits
    assert torch.equal(a, b) and v2 == vocab
    assert f2.encode(np.zeros((1, fast.time_horizon, fast.action_dim))) == fast.encode(np.zeros((1, fast.time_horizon, fast.action_dim)))


def test_processor_round_trip(loaded, tmp_path):
    _, proc, _, _, _, frames = loaded
    proc.save_pretrained(tmp_path)
    p2 = M.ImageOnlyQwenProcessor.from_pretrained(tmp_path)
    img = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    text = "<|vision_start|><|image_pad|><|vision_end|>put the bowl on the plate<ACTION_START><act_2>"
    a, b = proc(text=[text], images=[img], return_tensors="pt"), p2(text=[text], images=[img], return_tensors="pt")
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])


def test_chat_template_renders_the_three_kinds(loaded):
    tok = loaded[1].tokenizer
    for kind, pattern in [("vqa", r"^[A-Z][^<]*\.<\|im_end\|>$"),
                          ("reason", r"^<think>[^<]+</think><answer><ACTION_START>(<act_\d+>)+<ACTION_END></answer><\|im_end\|>$"),
                          ("fast", r"^<answer><ACTION_START>(<act_\d+>)+<ACTION_END></answer><\|im_end\|>$")]:
        x = batch_of(loaded, kind)
        for i in range(len(x["input_ids"])):
            full = tok.decode(x["input_ids"][i][x["attention_mask"][i] == 1])
            answer = tok.decode(x["labels"][i][x["labels"][i] != -100])
            assert full.startswith("<|im_start|>user\n<|vision_start|>") and "<|im_start|>assistant\n" in full
            assert full.endswith(answer)
            assert __import__("re").match(pattern, answer), answer
        n_img = int(x["mm_token_type_ids"][0].sum())
        assert n_img == 4                              # 64 px → 56 px → 2×2 merged tokens


def test_resume_continues_from_the_saved_step(demos_dir, fast_dir, tmp_path):
    out = str(tmp_path / "r")
    common = ["sft.py", "--model", "tiny", "--data", demos_dir, "--fast", fast_dir, "--out", out, "--steps", "4",
              "--global-batch", "4", "--micro-batch", "4", "--eval-prompts", "2", "--max-new-tokens", "4"]
    run(*common, "--save-every", "2")
    full = json.load(open(os.path.join(out, "metrics.json")))["loss_history"]
    assert json.load(open(os.path.join(out, "resume", "step.json")))["step"] == 2
    run(*common, "--resume")
    resumed = json.load(open(os.path.join(out, "metrics.json")))["loss_history"]
    assert len(resumed) == 2
    np.testing.assert_allclose(resumed, full[2:], rtol=1e-4)


def test_paired_change_subtracts_per_prompt_over_shared_metrics():
    after, before = {"reason/prefix": [1.0, 0.5, 0.5], "reason/where": [1, 1]}, {"reason/prefix": [0.0, 0.5, 0.0]}
    c = sft.paired_change(after, before)
    assert set(c) == {"reason/prefix"}                   # a metric measured only once has no paired change
    mean, lo, hi = c["reason/prefix"]
    assert mean == pytest.approx(0.5) and lo < mean < hi


def test_continued_sft_reports_paired_change_and_image_effect(tiny_ckpt, demos_dir, fast_dir, tmp_path):
    out = tmp_path / "c"
    run("sft.py", "--model", tiny_ckpt, "--data", demos_dir, "--fast", fast_dir, "--out", str(out), "--steps", "1",
        "--global-batch", "4", "--micro-batch", "4", "--eval-prompts", "3", "--max-new-tokens", "4")
    m = json.load(open(out / "metrics.json"))
    for k in ("change", "image_effect"):
        assert "reason/prefix" in m[k] and len(m[k]["reason/prefix"]) == 3
    # the paired change is the difference of the two means, measured on the same prompts
    assert m["change"]["reason/format"][0] == pytest.approx(m["after"]["reason/format"][0] - m["before"]["reason/format"][0])


def torchrun2(*args):
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_ddp_and_fsdp_match_one_process(demos_dir, fast_dir, tmp_path):
    common = ["--model", "tiny", "--data", demos_dir, "--fast", fast_dir, "--steps", "3", "--global-batch", "8",
              "--eval-prompts", "2", "--max-new-tokens", "4", "--lr", "3e-3"]
    run("sft.py", *common, "--micro-batch", "4", "--out", str(tmp_path / "one"))
    torchrun2("sft.py", *common, "--micro-batch", "2", "--out", str(tmp_path / "ddp"))
    torchrun2("sft.py", *common, "--micro-batch", "2", "--fsdp", "--save-every", "2", "--out", str(tmp_path / "fsdp"))
    curve = {d: json.load(open(tmp_path / d / "metrics.json"))["loss_history"] for d in ("one", "ddp", "fsdp")}
    # same global batch, same data, same init: the curves agree up to float summation order
    np.testing.assert_allclose(curve["ddp"], curve["one"], rtol=2e-3)
    np.testing.assert_allclose(curve["fsdp"], curve["one"], rtol=2e-3)
    assert curve["one"][-1] < curve["one"][0]
    # the sharded run writes the same full checkpoint (tied LM head once), loadable by from_pretrained
    one, fsdp = (M.load_backbone(str(tmp_path / d))[0].state_dict() for d in ("one", "fsdp"))
    assert one.keys() == fsdp.keys() and max((one[k] - fsdp[k]).abs().max().item() for k in one) < 1e-3
    # and resumes from its gathered state: the last step again, as in the uninterrupted run
    torchrun2("sft.py", *common, "--micro-batch", "2", "--fsdp", "--resume", "--out", str(tmp_path / "fsdp"))
    resumed = json.load(open(tmp_path / "fsdp" / "metrics.json"))["loss_history"]
    np.testing.assert_allclose(resumed, curve["fsdp"][2:], rtol=1e-4)


def test_bad_model_path_is_a_one_line_error(demos_dir, fast_dir, tmp_path):
    p = subprocess.run([sys.executable, "sft.py", "--model", str(tmp_path / "nope"), "--data", demos_dir,
                        "--fast", fast_dir, "--out", str(tmp_path / "o")], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1] == f"sft.py: {tmp_path / 'nope'}: no such checkpoint directory"
    assert not os.path.exists(tmp_path / "o")


def test_checkpoint_without_action_vocabulary_is_an_error(tiny_ckpt, tmp_path):
    d = tmp_path / "novocab"
    shutil.copytree(tiny_ckpt, d)
    os.remove(d / "action_vocab.json")
    with pytest.raises(M.CheckpointError, match="no action vocabulary"):
        M.load_backbone(str(d))


def test_stage2_episodes_are_disjoint_from_sft_training(tiny_ckpt, demos_dir):
    st = json.load(open(os.path.join(tiny_ckpt, "stage2.json")))
    ds = DemoDataset(demos_dir)
    train, stage2, val = sft.split_episodes(ds, 0.3, 0)
    assert st["episodes"] == stage2 and stage2
    assert not set(stage2) & set(train) and not set(stage2) & set(val)


SHIPPED = os.path.join(ROOT, "assets", "tiny-vl")


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """The shipped backbone and demos from scene samples no demo set uses (2000+): layouts it never saw."""
    from data.mini_libero import write_demos
    d = str(tmp_path_factory.mktemp("shipped") / "d")
    write_demos(d, ["spatial", "object", "goal", "long"], per_task=1, size=128, workers=1, first_init=2000)
    ds = DemoDataset(d)
    return M.load_backbone(SHIPPED), ds, sm.Frames(ds, range(len(ds)))


def _true_and_shuffled(shipped, kind, n=48):
    (model, proc, fast, vocab), ds, frames = shipped
    samples = sm.build_samples(ds, list(range(len(ds))), fast, {kind: 1.0}, 0)
    samples = [samples[i] for i in np.random.default_rng(0).permutation(len(samples))[:n]]
    return [sft.evaluate(model, proc, vocab, fast, samples, frames, max_new_tokens=96, shuffle=s, per_prompt=True)[1]
            for s in (False, True)]


Z_999 = 3.29       # two-sided 99.9 % normal quantile: a true effect of the measured size fails < 1 in 1000 times


def paired_lower_bound(a, b) -> float:
    """Lower end of the 99.9 % normal interval of the mean per-prompt difference a − b (paired: same prompts)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    return float(d.mean() - Z_999 * d.std(ddof=1) / np.sqrt(len(d)))


def test_shipped_backbone_reads_its_image(shipped):
    """The backbone the pipeline starts from must use its image: on held-out frames its scene captions place
    objects better with the true image than with images shuffled across prompts. The margin is statistical: the
    paired per-prompt difference must clear zero at 99.9 % (Z_999), so a backbone with the measured effect fails
    this by chance less than once in a thousand draws of prompts."""
    true, shuf = _true_and_shuffled(shipped, "caption")
    assert paired_lower_bound(true["caption/accuracy"], shuf["caption/accuracy"]) > 0
    assert np.mean(true["caption/accuracy"]) > 0.3


def test_shipped_backbone_actions_lean_on_the_image(shipped):
    """Its plain FAST answers move the right way more often with the true image than with a shuffled one: the
    paired per-prompt difference in direction accuracy clears zero at 99.9 % over 512 prompts."""
    true, shuf = _true_and_shuffled(shipped, "fast", n=512)
    assert paired_lower_bound(true["fast/direction"], shuf["fast/direction"]) > 0


def test_score_where_counts_grid_positions_stated_in_order(loaded):
    """`where` = share of the target's grid positions the generated reasoning states, in order; actions aside."""
    model, proc, fast, vocab, samples, frames = loaded
    s = sm.Sample(0, 0, "reason", "p", "<think>The gripper is at (3, 7) and the bowl is at (5, 2). Go.</think>"
                   "<answer><ACTION_START>{ACTIONS}<ACTION_END></answer>", [1, 2], [0, 0, 0])
    def where(think):
        return sft.score(s, [], f"<think>{think}</think><answer></answer>", vocab, fast)["where"]
    assert where("The gripper is at (3, 7) and the bowl is at (5, 2).") == 1.0
    assert where("The gripper is at (3, 7) and the bowl is at (5, 3).") == 0.5
    assert where("The bowl is at (5, 2).") == 0.0                 # right place, wrong slot
    assert where("I move left.") == 0.0
    assert "where" not in sft.score(samples["fast"][0], [], "", vocab, fast)
