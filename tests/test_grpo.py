"""grpo.py: reward edge cases, advantages, the loss against hand-computed values, masking, padding, KL, the
on-policy gradient, zero-spread groups, malformed generations, evaluation parity with sft.py, and the CLI
(single process with every code path, resume, bad input, and a 2-process torchrun run on CPU).

Everything is built here: a 10-episode mini-LIBERO dataset (64 px), a FAST tokenizer fitted on it, and an
untrained tiny Qwen2.5-VL saved as an sft.py-style checkpoint (its generations are garbage, which is the point
of the never-raises tests)."""
import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import grpo
import model as M
import samples as sm
import sft
from data.demos import DemoDataset
from data.mini_libero import write_demos
from fast_tokenizer import FastTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V = {"act_offset": 100, "n_actions": 50, "action_start": 98, "action_end": 99}   # a made-up action vocabulary
S, E = 98, 99
GOOD = "<think>move left</think><answer><ACTION_START><ACTION_END></answer>"


def block(*acts):                            # ids of <ACTION_START> a… <ACTION_END>
    return [S, *[100 + a for a in acts], E]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """An sft.py-layout checkpoint of an untrained tiny model over a 10-episode dataset (3 val episodes)."""
    d = tmp_path_factory.mktemp("grpo")
    write_demos(str(d / "demos"), ["spatial"], per_task=1, size=64, workers=1)
    path = d / "demos" / "episodes.jsonl"
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    for r in recs[-3:]:
        r["split"] = "val"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    ds = DemoDataset(str(d / "demos"))
    fast = FastTokenizer.fit(ds.action_chunks(16), vocab_size=1024)   # the project default
    samples = sm.build_samples(ds, ds.indices("train"), fast, {"reason": 1.0}, 0)
    corpus = [s.prompt for s in samples] + [s.answer for s in samples] + ["You are a helpful assistant."]
    torch.manual_seed(0)
    model, proc, vocab = M.build_tiny(corpus, fast)
    M.save_checkpoint(model, proc, fast, vocab, str(d / "sft"),
                        {"stage2.json": {"data": str(d / "demos"), "episodes": ds.indices("train")[:3]}})
    return d


@pytest.fixture(scope="module")
def tiny(ckpt):
    model, proc, fast, vocab = M.load_backbone(str(ckpt / "sft"))
    proc.tokenizer.padding_side = "left"
    ds = DemoDataset(str(ckpt / "demos"))
    samples = sm.build_samples(ds, ds.indices("train")[:2], fast, {"reason": 1.0}, 0)[::9][:4]
    frames = sm.Frames(ds, ds.indices())
    return model, proc, fast, vocab, samples, frames


def prompt_batch(tiny, samples, G=1):
    model, proc, fast, vocab, _, frames = tiny
    inp = sm.collate(samples, [frames(s) for s in samples], proc, vocab, with_answer=False)
    inp.pop("labels")
    return grpo.repeat_group(inp, G)


def completions(tiny, n, C=7, seed=0):
    """n random completions of action ids, each closed by EOS at a random place, padded after it."""
    model, proc, fast, vocab, _, _ = tiny
    g = torch.Generator().manual_seed(seed)
    c = torch.randint(vocab["act_offset"], vocab["act_offset"] + vocab["n_actions"], (n, C), generator=g)
    for i in range(n):
        k = int(torch.randint(1, C, (1,), generator=g))
        c[i, k] = proc.tokenizer.eos_token_id
        c[i, k + 1:] = proc.tokenizer.pad_token_id
    return c


# ----------------------------------------------------------------------------- reward
def r_of(ids, target, text="", finished=True, **kw):
    return grpo.reward(ids, text, finished, target, V, **kw)


def test_reward_exact_match_and_format():
    assert r_of(block(1, 2, 3), [1, 2, 3], GOOD) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("ids,target,expected", [
    (block(9, 2, 3), [1, 2, 3], 0.0),                  # first token wrong: no prefix at all
    (block(1, 9, 3), [1, 2, 3], 1 / 3),                # the prefix stops at the first mismatch
    (block(1, 2), [1, 2, 3, 4], 0.5),                  # shorter than the target: at most len/m
    (block(1, 2, 3, 4, 7, 7), [1, 2, 3, 4], 1.0),      # extra tokens after a full match: still 1 (paper)
    (block(), [1, 2], 0.0),                            # empty block
    ([100 + 1, 100 + 2, E], [1, 2], 0.0),              # no <ACTION_START>
    ([S, 100 + 1, 100 + 2], [1, 2], 0.0),              # no <ACTION_END>
    ([E, 100 + 1, S], [1], 0.0),                       # markers in the wrong order
    (block(1, 2) + block(1, 2), [1, 2], 0.0),          # duplicated block
    ([S, S, 101, 102, E], [1, 2], 0.0),                # duplicated <ACTION_START>
    ([S, 101, 102, E, E], [1, 2], 0.0),                # duplicated <ACTION_END>
    ([S, 101, 5, 102, E], [1, 2], 0.0),                # text inside the block: parse failure
    ([S, 101, 100 + 50, E], [1, 2], 0.0),              # id past the action vocabulary: parse failure
    ([7, 8] + block(1, 2) + [9], [1, 2], 1.0),         # text around the block does not matter to r_a
])
def test_reward_prefix_edge_cases(ids, target, expected):
    r, r_f, r_a = r_of(ids, target, "no tags")
    assert r_f == 0.0 and r_a == pytest.approx(expected) and r == pytest.approx(expected / 2)


def test_strict_length_charges_extra_tokens():
    assert r_of(block(1, 2, 3, 4, 7), [1, 2, 3, 4], strict_length=True)[2] == pytest.approx(4 / 5)
    assert r_of(block(1, 2), [1, 2, 3, 4], strict_length=True)[2] == pytest.approx(0.5)


def test_r_a_reads_token_ids_not_text():
    assert r_of(block(1, 2), [1, 2], "<ACTION_START><act_9><ACTION_END>")[2] == 1.0
    assert r_of([5, 6], [1, 2], "<ACTION_START><act_1><act_2><ACTION_END>")[2] == 0.0


@pytest.mark.parametrize("text,finished,expected", [
    (GOOD, True, 1.0),
    ("<think>a</think>\n <answer>b</answer>", True, 1.0),        # whitespace between blocks: allowed
    (GOOD, False, 0.0),                                          # truncated: never stopped
    ("<think></think><answer>b</answer>", True, 0.0),            # empty reasoning
    ("x<think>a</think><answer>b</answer>", True, 0.0),          # text before
    ("<think>a</think><answer>b</answer>x", True, 0.0),          # text after
    ("<think>a</think><answer>b</answer><answer>c</answer>", True, 0.0),   # duplicated answer
    ("<think>a<think>b</think><answer>c</answer>", True, 0.0),   # nested think
    ("<answer>b</answer><think>a</think>", True, 0.0),           # wrong order
    ("", True, 0.0), ("garbage ][ <think", True, 0.0),
])
def test_format_reward(text, finished, expected):
    assert r_of([], [1], text, finished)[1] == expected


def test_format_weight_mixes_the_two_parts():
    r, r_f, r_a = r_of(block(1, 9), [1, 2], GOOD, format_weight=0.2)
    assert (r_f, r_a) == (1.0, 0.5) and r == pytest.approx(0.2 * 1.0 + 0.8 * 0.5)
    assert r_of(block(1, 9), [1, 2], GOOD, format_weight=0.0)[0] == pytest.approx(0.5)


def test_l1_reward(tiny):
    fast = tiny[2]
    target = fast.encode(np.zeros((1, 16, 7), np.float32))[0]
    v = {**V, "act_offset": 1000, "n_actions": fast.vocab_size}
    ids = [S, *[1000 + t for t in target], E]
    assert grpo.reward(ids, "", True, target, v, fast, kind="l1")[2] == pytest.approx(1.0)
    far = fast.encode(np.ones((1, 16, 7), np.float32))[0]
    r_far = grpo.reward([S, *[1000 + t for t in far], E], "", True, target, v, fast, kind="l1")[2]
    assert 0.0 <= r_far < 1.0
    assert grpo.reward([S, 5, E], "", True, target, v, fast, kind="l1")[2] == 0.0      # parse failure


def test_malformed_completions_never_raise(tiny):
    fast, rng = tiny[2], np.random.default_rng(0)
    v = {**V, "act_offset": 1000, "n_actions": fast.vocab_size}
    for i in range(300):
        ids = rng.integers(0, 1000 + fast.vocab_size + 5, int(rng.integers(0, 40))).tolist()
        if i % 3 == 0:
            ids = [S] + ids + [E]
        text = "".join(rng.choice(["<think>", "</think>", "<answer>", "</answer>", "x", " ", "\n"], int(rng.integers(0, 8))))
        for kind in ("prefix", "l1"):
            r, r_f, r_a = grpo.reward(ids, text, bool(i % 2), [1, 2, 3], v, fast, kind=kind)
            assert 0.0 <= r_a <= 1.0 and r_f in (0.0, 1.0) and 0.0 <= r <= 1.0


# ----------------------------------------------------------------------------- advantages, loss, KL
def test_group_advantages():
    r = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.7, 0.7, 0.7, 0.7], [1.0, 1.0, 1.0, 0.0]])
    a, flat = grpo.group_advantages(r)
    assert flat.tolist() == [False, True, False]
    assert torch.all(a[1] == 0)                                   # equal rewards: exactly zero, no 0/eps noise
    assert torch.allclose(a.sum(1), torch.zeros(3), atol=1e-6)    # centred per group
    assert torch.allclose(a[[0, 2]].std(1), torch.ones(2), atol=1e-3)   # unit (Bessel) std
    assert a[2, 3] == pytest.approx(-1.5, abs=1e-3) and a[2, 0] == pytest.approx(0.5, abs=1e-3)
    a, _ = grpo.group_advantages(r, scale_std=False)              # Dr. GRPO: only centred
    assert torch.allclose(a[2], torch.tensor([0.25, 0.25, 0.25, -0.75]))


def test_completion_mask_covers_the_first_eos_and_nothing_after():
    c = torch.tensor([[5, 2, 6, 2, 0], [5, 5, 5, 5, 5], [2, 0, 0, 0, 0]])
    assert grpo.completion_mask(c, eos=2).int().tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def hand_example():
    ln = torch.log
    old = torch.zeros(2, 3)
    logp = ln(torch.tensor([[1.5, 0.5, 3.0], [1.5, 0.5, 1.0]]))   # ratios ρ (old log-prob 0)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    adv = torch.tensor([1.0, -1.0])
    return logp, old, adv, mask


def test_loss_equals_hand_computed_value():
    logp, old, adv, mask = hand_example()
    # A = +1: −min(1.5, 1.2) = −1.2, −min(0.5, 0.8) = −0.5, third token masked (ρ 3 would give −1.2)
    # A = −1: −min(−1.5, −1.2) = 1.5, −min(−0.5, −0.8) = 0.8, −min(−1, −1) = 1
    loss, clipped = grpo.grpo_loss(logp, old, adv, mask, n_norm=5)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.5 + 0.8 + 1.0) / 5)
    assert clipped.tolist() == [[True, False, False], [False, True, False]]
    loss, _ = grpo.grpo_loss(logp, old, adv, mask, n_norm=2, norm="sequence")
    assert loss.item() == pytest.approx(((-1.2 - 0.5) / 2 + (1.5 + 0.8 + 1.0) / 3) / 2)
    loss, _ = grpo.grpo_loss(logp, old, adv, mask, n_norm=5, eps_high=0.6)      # separate upper ε: 1.5 < 1.6
    assert loss.item() == pytest.approx((-1.5 - 0.5 + 1.5 + 0.8 + 1.0) / 5)
    ref = logp + torch.log(torch.tensor(2.0))                      # d = ln 2 → k3 = 2 − ln 2 − 1
    loss, _ = grpo.grpo_loss(logp, old, adv, mask, n_norm=5, ref_logp=ref, beta=0.1)
    assert loss.item() == pytest.approx((1.6 + 5 * 0.1 * (1 - np.log(2))) / 5, rel=1e-5)


def test_masked_tokens_get_no_gradient():
    logp, old, adv, mask = hand_example()
    logp = logp.clone().requires_grad_(True)
    grpo.grpo_loss(logp, old, adv, mask, n_norm=5, ref_logp=old, beta=0.1)[0].backward()
    assert torch.all(logp.grad[~mask] == 0) and torch.all(logp.grad[mask] != 0)


def test_k3_is_zero_for_identical_policies_and_positive_otherwise():
    x = torch.randn(4, 9)
    assert torch.all(grpo.k3(x, x) == 0)
    y = x + torch.randn(4, 9)
    assert torch.all(grpo.k3(y, x) >= 0) and grpo.k3(y, x).sum() > 0


def test_on_policy_ratio_is_one_and_gradient_is_the_plain_policy_gradient():
    torch.manual_seed(0)
    w = torch.randn(5, 8, requires_grad=True)                      # a tiny softmax policy over 8 tokens
    tokens = torch.randint(0, 8, (4, 5))
    mask = torch.rand(4, 5) > 0.3
    adv = torch.randn(4)

    def logp_of():
        return torch.log_softmax(w, -1)[torch.arange(5), tokens]    # [4, 5]
    lp = logp_of()
    assert torch.all(torch.exp(lp - lp.detach()) == 1)
    loss, clipped = grpo.grpo_loss(lp, lp.detach(), adv, mask, n_norm=float(mask.sum()))
    assert not clipped.any()
    g = torch.autograd.grad(loss, w)[0]
    pg = -(adv[:, None] * logp_of() * mask).sum() / mask.sum()      # REINFORCE with the same normaliser
    assert torch.allclose(g, torch.autograd.grad(pg, w)[0], atol=1e-6)


# ----------------------------------------------------------------------------- with the tiny model
def test_left_padding_does_not_change_token_logprobs(tiny):
    model, proc, fast, vocab, samples, frames = tiny
    long = samples[0]
    short = sm.Sample(**{**long.__dict__, "prompt": "go."})       # a much shorter prompt → left padding
    comp = completions(tiny, 2)
    both = prompt_batch(tiny, [long, short])
    assert (both["attention_mask"][1] == 0).sum() > 5
    mask = grpo.completion_mask(comp, proc.tokenizer.eos_token_id)
    banned = grpo.suppressed_ids(proc.tokenizer, model)
    with torch.no_grad():
        lp_both, _ = grpo.token_logprobs(model, grpo.scoring_inputs(both, comp, mask, 0, 2), 7, 1.0, banned)
        alone = prompt_batch(tiny, [short])
        assert (alone["attention_mask"] == 0).sum() == 0
        lp_alone, _ = grpo.token_logprobs(model, grpo.scoring_inputs(alone, comp[1:], mask[1:], 0, 1), 7, 1.0, banned)
    assert torch.allclose(lp_both[1], lp_alone[0], atol=1e-4)
    assert torch.all(lp_both[mask] < 0) and torch.all(lp_both[~mask] == 0)


def test_scoring_gives_the_log_probs_that_sampling_used(tiny):
    """Temperature 0.7 and left-padded prompts: the scoring forward's log-prob of every sampled token equals
    generate's own (its logits / T with the suppressed tokens removed)."""
    model, proc, fast, vocab, samples, frames = tiny
    tok, T = proc.tokenizer, 0.7
    b = prompt_batch(tiny, [samples[0], sm.Sample(**{**samples[1].__dict__, "prompt": "go."})], G=3)
    banned = grpo.suppressed_ids(tok, model)
    gen = grpo.GenerationConfig(do_sample=True, temperature=T, top_k=0, top_p=1.0, max_new_tokens=10, suppress_tokens=banned,
                                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, return_dict_in_generate=True,
                                output_logits=True)
    torch.manual_seed(1)
    keys = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")
    with torch.no_grad():
        out = model.generate(**{k: b[k] for k in keys}, generation_config=gen)
        comp = out.sequences[:, b["input_ids"].shape[1]:]
        mask = grpo.completion_mask(comp, tok.eos_token_id)
        lp, _ = grpo.token_logprobs(model, grpo.scoring_inputs(b, comp, mask, 0, 6), comp.shape[1], T, banned)
    logits = torch.stack(out.logits, 1).float() / T
    logits[..., banned] = grpo.NEG
    want = logits.log_softmax(-1).gather(-1, comp[..., None]).squeeze(-1)
    assert (b["attention_mask"] == 0).any()
    assert torch.allclose(lp[mask], want[mask], atol=1e-4)


def test_tokens_after_eos_change_nothing(tiny):
    model, proc, fast, vocab, samples, frames = tiny
    b = prompt_batch(tiny, samples[:2])
    comp = completions(tiny, 2)
    mask = grpo.completion_mask(comp, proc.tokenizer.eos_token_id)
    other = torch.where(mask, comp, vocab["act_offset"] + 3)       # different garbage after the EOS
    banned = grpo.suppressed_ids(proc.tokenizer, model)
    grads = []
    for c in (comp, other):
        model.zero_grad()
        lp, _ = grpo.token_logprobs(model, grpo.scoring_inputs(b, c, mask, 0, 2), 7, 1.0, banned)
        loss, _ = grpo.grpo_loss(lp, lp.detach() - 0.1, torch.tensor([1.0, -0.5]), mask, float(mask.sum()))
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6) and grads[0].abs().sum() > 0


def test_a_group_with_equal_rewards_gives_zero_gradient(tiny):
    model, proc, fast, vocab, samples, frames = tiny
    b = prompt_batch(tiny, samples[:1], G=4)
    comp = completions(tiny, 4)
    mask = grpo.completion_mask(comp, proc.tokenizer.eos_token_id)
    adv, flat = grpo.group_advantages(torch.full((1, 4), 0.5))
    model.zero_grad()
    lp, _ = grpo.token_logprobs(model, grpo.scoring_inputs(b, comp, mask, 0, 4), 7, 1.0, grpo.suppressed_ids(proc.tokenizer, model))
    grpo.grpo_loss(lp, lp.detach(), adv.reshape(-1), mask, float(mask.sum()))[0].backward()
    assert flat.all() and all(p.grad is None or torch.all(p.grad == 0) for p in model.parameters())


def test_sampling_garbage_never_raises_and_is_scored(tiny):
    model, proc, fast, vocab, samples, frames = tiny
    cfg = grpo.parse_config(["--group", "3", "--max-new-tokens", "12"])
    b = prompt_batch(tiny, samples[:2], G=3)
    tok = proc.tokenizer
    banned = grpo.suppressed_ids(tok, model)
    gen = grpo.GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=12,
                                suppress_tokens=banned, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    comp = grpo.sample(model, b, gen)
    assert comp.shape[0] == 6 and not any(t in banned for t in comp[grpo.completion_mask(comp, tok.eos_token_id)].tolist())
    R = grpo.score_completions(comp, grpo.completion_mask(comp, tok.eos_token_id), samples[:2], tok, vocab, fast, cfg)
    assert R.shape == (6, 3) and torch.all((R >= 0) & (R <= 1))


def test_the_loop_raises_the_probability_of_rewarded_tokens(tiny):
    """Sample → reward → group advantages → optimize, 8 rounds, with a reward that counts action tokens: the
    policy's probability of an action token as first completion token must rise (sign and plumbing check)."""
    model, proc, fast, vocab, samples, frames = tiny
    model = copy.deepcopy(model)
    cfg = grpo.parse_config(["--group", "8", "--rollout-batch", "2", "--update-batch", "2", "--lr", "1e-2"])
    tok, b = proc.tokenizer, prompt_batch(tiny, samples[:2], G=8)
    banned, lo, hi = grpo.suppressed_ids(tok, model), vocab["act_offset"], vocab["act_offset"] + vocab["n_actions"]
    gen = grpo.GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=4,
                                suppress_tokens=banned, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)

    def p_action():
        with torch.no_grad():
            keys = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")
            return model(**{k: b[k] for k in keys}).logits[:, -1].softmax(-1)[:, lo:hi].sum(-1).mean().item()
    torch.manual_seed(0)
    before = p_action()
    for _ in range(8):
        comp = grpo.sample(model, b, gen)
        mask = grpo.completion_mask(comp, tok.eos_token_id)
        r = ((comp >= lo) & (comp < hi) & mask).float().sum(1) / mask.sum(1)
        adv, _ = grpo.group_advantages(r.view(2, 8))
        grpo.optimize(cfg, grpo.Sizes.of(cfg, 1), model, opt, b, comp, mask, adv.reshape(-1), banned=banned)
    assert p_action() > before + 0.15, (before, p_action())


def test_evaluation_figures_equal_sft_evaluate(tiny):
    model, proc, fast, vocab, samples, frames = tiny
    for shuffle in (False, True):
        ours, rows = grpo.evaluate(model, proc, vocab, fast, samples[:3], frames, 6, shuffle=shuffle)
        assert ours == sft.evaluate(model, proc, vocab, fast, samples[:3], frames, 6, shuffle=shuffle)
        assert all(len(v) == 3 for v in rows.values())


def test_round_prompts_cover_each_prompt_once_per_epoch():
    idx = np.concatenate([grpo.round_prompts(10, 4, k, seed=3) for k in range(5)])    # two epochs
    assert sorted(idx[:10]) == list(range(10)) and sorted(idx[10:20]) == list(range(10))
    assert np.array_equal(grpo.round_prompts(10, 4, 2, 3), grpo.round_prompts(10, 4, 2, 3))


# ----------------------------------------------------------------------------- the CLI
def run_main(ckpt, out, *argv):
    return grpo.main(grpo.parse_config(["--init", str(ckpt / "sft"), "--out", str(out), "--max-new-tokens", "8",
                                        "--eval-prompts", "3", "--sample-every", "1", *argv]))


def test_single_process_run_with_every_option_then_resume(ckpt, tmp_path):
    out = tmp_path / "grpo"
    m = run_main(ckpt, out, "--steps", "2", "--rollout-batch", "2", "--update-batch", "1", "--group", "3", "--mu", "2",
                 "--beta", "0.1", "--loss-norm", "sequence", "--reward", "l1", "--top-p", "0.9", "--temperature", "0.7",
                 "--no-scale-std", "--clip-eps-high", "0.28", "--micro-batch", "2", "--save-every", "1")
    assert {"before", "after", "after_image_shuffle", "change"} <= set(m)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines] == [1, 2]
    assert {"reward", "reward_std", "r_f", "r_a", "zero_spread", "length", "kl", "entropy", "clip_frac", "tok_s"} <= set(lines[0])
    assert lines[0]["kl"] is not None and lines[0]["kl"] >= 0
    model, proc, fast, vocab = M.load_backbone(str(out))        # the next stages load it like an SFT checkpoint
    assert vocab == json.loads((ckpt / "sft" / "action_vocab.json").read_text())
    run_main(ckpt, out, "--steps", "3", "--rollout-batch", "2", "--update-batch", "2", "--group", "2", "--resume")
    assert [json.loads(x)["round"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


@pytest.mark.parametrize("target", ["choice", "trace"])
def test_runs_on_the_other_targets(ckpt, tmp_path, target, monkeypatch):
    """--reward choice / trace align on their own prompts (Tab. 6); the held-out figures stay reasoning → FAST."""
    kinds = []
    build = grpo.build_samples
    monkeypatch.setattr(grpo, "build_samples", lambda ds, eps, fast, mix, seed: kinds.append(set(mix)) or
                        build(ds, eps, fast, mix, seed))
    m = run_main(ckpt, tmp_path / "g", "--steps", "1", "--rollout-batch", "2", "--update-batch", "2", "--group", "2",
                 "--reward", target)
    assert kinds[0] == {target} and {"reason"} in kinds                  # training prompts, then held-out ones
    assert "reason/prefix" in m["change"]
    line = json.loads((tmp_path / "g" / "metrics.jsonl").read_text().splitlines()[0])
    assert 0.0 <= line["r_a"] <= 1.0


@pytest.mark.parametrize("argv,msg", [
    (["--group", "1"], "--group"), (["--reward", "exact"], "--reward"), (["--rollout-batch", "3", "--update-batch", "2"], "multiple"),
    (["--init", "/nonexistent"], "no stage2.json"), (["--format-weight", "2"], "format-weight"),
])
def test_bad_input_is_a_one_line_error(ckpt, tmp_path, argv, msg):
    with pytest.raises(SystemExit) as e:
        grpo.main(grpo.parse_config(["--init", str(ckpt / "sft"), "--out", str(tmp_path / "o"), *argv]))
    assert str(e.value).startswith("grpo.py:") and msg in str(e.value) and "\n" not in str(e.value)


def test_torchrun_two_processes_on_cpu(ckpt, tmp_path):
    out = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "grpo.py",
                        "--init", str(ckpt / "sft"), "--out", str(out), "--steps", "2", "--rollout-batch", "2",
                        "--update-batch", "2", "--group", "2", "--max-new-tokens", "6", "--no-eval"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines] == [1, 2] and lines[0]["length"] > 0
    M.load_backbone(str(out))


def test_reward_curve_png(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import bench_grpo
    from PIL import Image
    bench_grpo.plot({0: [0.1, 0.2, 0.3, 0.25, 0.4, 0.5], 1: [0.2, 0.2, 0.2]}, str(tmp_path / "r.png"))
    img = Image.open(tmp_path / "r.png")
    assert img.size == (640, 360) and len(img.getcolors(1 << 20)) > 2   # axes, two coloured curves
