"""Tests for diffusion_head.py: schedule values, DDPM/DDIM algebra on hand cases, the head's shapes and masking,
a memorised chunk, and a tiny run of the toy demo. CPU only, no data, no network."""
import math
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import diffusion_head as dh  # noqa: E402


def betas_of(abar):
    return 1 - abar / torch.cat([abar.new_ones(1), abar[:-1]])     # β_t = 1 - ᾱ_t / ᾱ_{t-1}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is as fast, and far faster when other jobs share the 2 cores. Restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_head(**kw):
    cfg = dict(action_dim=3, horizon=4, proprio_dim=5, cond_dim=6, d_model=16, n_layers=1, n_heads=2, train_steps=10)
    torch.manual_seed(0)
    return dh.DiffusionHead(dh.HeadConfig(**{**cfg, **kw}))


def tiny_batch(B=2, L=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    actions = torch.rand(B, 4, 3, generator=g) * 2 - 1
    proprio, cond = torch.randn(B, 5, generator=g), torch.randn(B, L, 6, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, :2] = False                                              # example 0 is left-padded by two tokens
    return actions, proprio, cond, mask


# ----------------------------------------------------------------------------- schedules

def test_cosine_schedule_values():
    abar = dh.cosine_schedule(100)
    beta = betas_of(abar)
    # reference values of diffusers' squaredcos_cap_v2 at N = 100 (betas of the cosine schedule, clipped at 0.999)
    assert beta[0].item() == pytest.approx(6.31e-4, rel=2e-3)
    assert beta[99].item() == pytest.approx(0.999, rel=1e-9)       # the cap
    assert abar[0].item() == pytest.approx(0.99937, abs=1e-5)
    assert abar[49].item() == pytest.approx(0.494, abs=1e-3)
    assert abar[99].item() == pytest.approx(2.43e-7, rel=1e-2)
    assert (abar[1:] < abar[:-1]).all() and (beta > 0).all() and (beta <= 0.999 + 1e-12).all()


def test_linear_schedule_values():
    beta = betas_of(dh.linear_schedule(1000))
    assert beta[0].item() == pytest.approx(1e-4) and beta[-1].item() == pytest.approx(0.02)    # DDPM §4
    abar = dh.linear_schedule(100)
    beta = betas_of(abar)
    assert beta[0].item() == pytest.approx(1e-3) and beta[-1].item() == pytest.approx(0.2)     # scaled by 1000/T
    assert (abar[1:] < abar[:-1]).all() and abar[-1] < 1e-4                                    # still ends in noise
    with pytest.raises(ValueError):
        dh.make_schedule("sigmoid", 10)


def test_q_sample_closed_form_and_marginal():
    abar = torch.tensor([0.64, 0.36], dtype=torch.float64)
    x0, noise = torch.tensor([[1.0], [1.0]], dtype=torch.float64), torch.tensor([[0.5], [0.5]], dtype=torch.float64)
    x_t = dh.q_sample(x0, torch.tensor([0, 1]), noise, abar)
    assert x_t[:, 0].tolist() == pytest.approx([0.8 + 0.6 * 0.5, 0.6 + 0.8 * 0.5])           # √ᾱ x0 + √(1-ᾱ) ε
    # eq. 4 is the marginal of t+1 forward steps x_t = √(1-β_t) x_{t-1} + √β_t z (eq. 2)
    abar = dh.cosine_schedule(20)
    beta, g = betas_of(abar), torch.Generator().manual_seed(0)
    x = torch.full((200_000,), 0.7, dtype=torch.float64)
    for t in range(12):
        x = (1 - beta[t]).sqrt() * x + beta[t].sqrt() * torch.randn(x.shape, generator=g, dtype=torch.float64)
    assert x.mean().item() == pytest.approx(abar[11].sqrt().item() * 0.7, abs=5e-3)
    assert x.var().item() == pytest.approx(1 - abar[11].item(), abs=5e-3)


# ----------------------------------------------------------------------------- reverse steps

ABAR2 = torch.tensor([0.9, 0.45], dtype=torch.float64)          # β = [0.1, 0.5] by hand


def test_posterior_hand_case_and_bayes():
    x0, x_t = torch.tensor([[0.5]], dtype=torch.float64), torch.tensor([[1.0]], dtype=torch.float64)
    mean, var = dh.posterior_mean_var(x0, x_t, 1, ABAR2)
    # μ̃ = (√0.9·0.5·0.5 + √0.5·0.1·1.0) / 0.55, β̃ = 0.1/0.55·0.5, worked out by hand
    assert mean.item() == pytest.approx(0.5597846, abs=1e-6) and var.item() == pytest.approx(0.0909091, abs=1e-6)
    # the same from Bayes' rule: prior x_0' ~ N(√ᾱ_0 x0, 1-ᾱ_0), likelihood x_t ~ N(√α_1 x_0', β_1)
    prec = 1 / 0.1 + 0.5 / 0.5
    assert var.item() == pytest.approx(1 / prec)
    assert mean.item() == pytest.approx((math.sqrt(0.9) * 0.5 / 0.1 + math.sqrt(0.5) * 1.0 / 0.5) / prec)
    mean0, var0 = dh.posterior_mean_var(x0, x_t, 0, ABAR2)           # first step: ᾱ_{-1} = 1
    assert mean0.item() == pytest.approx(0.5) and var0.item() == 0


def test_ddpm_step_matches_posterior_and_eq11():
    x_t, eps, z = (torch.tensor([[v]], dtype=torch.float64) for v in (0.3, -0.4, 0.7))
    x0 = (x_t - math.sqrt(0.55) * eps) / math.sqrt(0.45)              # eq. 15 by hand: 0.7394
    mean, var = dh.posterior_mean_var(x0, x_t, 1, ABAR2)
    assert dh.ddpm_step(x_t, eps, 1, ABAR2, z).item() == pytest.approx((mean + var.sqrt() * z).item())
    # unclipped, the x0 route equals DDPM eq. 11: (x_t - β/√(1-ᾱ) ε) / √α
    eq11 = (0.3 - 0.5 / math.sqrt(0.55) * -0.4) / math.sqrt(0.5)
    assert dh.ddpm_step(x_t, eps, 1, ABAR2, 0 * z, clip=False).item() == pytest.approx(eq11)


def test_clip_sample_clamps_predicted_x0():
    x_t, eps = torch.tensor([[2.5]], dtype=torch.float64), torch.tensor([[-1.0]], dtype=torch.float64)
    assert dh.predict_x0(x_t, 1, eps, ABAR2).item() > 1              # (2.5 + √0.55) / √0.45 ≈ 4.83
    clipped, _ = dh.posterior_mean_var(torch.ones_like(x_t), x_t, 1, ABAR2)
    assert dh.ddpm_step(x_t, eps, 1, ABAR2, 0 * x_t).item() == pytest.approx(clipped.item())
    assert dh.ddpm_step(x_t, eps, 1, ABAR2, 0 * x_t, clip=False).item() > clipped.item() + 0.5
    assert dh.ddim_step(x_t, eps, 1, -1, ABAR2).item() == pytest.approx(1.0)   # last step returns the clamped x0


def test_ddim_timesteps():
    assert dh.ddim_timesteps(100, 10) == [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]
    assert dh.ddim_timesteps(100, 100) == list(range(99, -1, -1))
    assert dh.ddim_timesteps(100, 3) == [66, 33, 0]
    for K in (0, 101):
        with pytest.raises(ValueError):
            dh.ddim_timesteps(100, K)


def fake_eps(x, t):                                                  # any deterministic ε_θ will do
    return 0.6 * x + 0.3 * math.sin(t) + 0.1


@pytest.mark.parametrize("clip", [True, False])
def test_ddim_with_eta1_and_K_equal_T_is_ddpm(clip):
    """DDIM §4.1: η = 1 on the full schedule is DDPM's ancestral sampler (same noise, same path); η = 0 is not."""
    T, abar, g = 30, dh.cosine_schedule(30), torch.Generator().manual_seed(0)
    x_T, zs = torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randn(T, 8, 3, generator=g, dtype=torch.float64)
    paths = {}
    for name in ("ddpm", "ddim_eta1", "ddim_eta0"):
        x, ts = x_T.clone(), dh.ddim_timesteps(T, T)
        for i, (t, t_prev) in enumerate(zip(ts, ts[1:] + [-1])):
            if name == "ddpm": x = dh.ddpm_step(x, fake_eps(x, t), t, abar, zs[i], clip)
            else: x = dh.ddim_step(x, fake_eps(x, t), t, t_prev, abar, float(name[-1]), zs[i], clip)
        paths[name] = x
    assert torch.allclose(paths["ddpm"], paths["ddim_eta1"], atol=1e-9)
    assert not torch.allclose(paths["ddpm"], paths["ddim_eta0"], atol=1e-3)


@pytest.mark.parametrize("K", [1, 3, 10, 100])
def test_samplers_recover_a_point_mass_with_the_oracle_eps(K):
    """For data = one point x*, the optimal ε_θ(x_t, t) = (x_t - √ᾱ_t x*) / √(1-ᾱ_t): both samplers must land on x*."""
    T, abar, g = 100, dh.cosine_schedule(100), torch.Generator().manual_seed(0)
    target = torch.tensor([0.3, -0.8, 0.95], dtype=torch.float64)
    oracle = lambda x, t: (x - abar[t].sqrt() * target) / (1 - abar[t]).sqrt()
    x, ts = torch.randn(5, 3, generator=g, dtype=torch.float64), dh.ddim_timesteps(T, K)
    for t, t_prev in zip(ts, ts[1:] + [-1]):
        x = dh.ddim_step(x, oracle(x, t), t, t_prev, abar)
    assert torch.allclose(x, target.expand(5, 3), atol=1e-9)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    for t in range(T - 1, -1, -1):
        x = dh.ddpm_step(x, oracle(x, t), t, abar, torch.randn(x.shape, generator=g, dtype=torch.float64))
    assert torch.allclose(x, target.expand(5, 3), atol=1e-9)


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_every_parameterisation_gives_the_samplers_the_same_eps(prediction):
    """The output a perfect network would give for each parameterisation converts back to the true ε."""
    abar = dh.cosine_schedule(100)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(4, 3, 2, generator=g) * 2 - 1, torch.randn(4, 3, 2, generator=g)
    t = torch.tensor([0, 10, 50, 99])
    x_t = dh.q_sample(x0, t, eps, abar)
    a = dh._at(abar, t, x0)
    out = {"epsilon": eps, "sample": x0, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0}[prediction]
    assert torch.allclose(dh.eps_from_output(out, x_t, t, abar, prediction), eps, atol=2e-3)
    with pytest.raises(ValueError, match="epsilon, sample or v_prediction"):
        dh.eps_from_output(out, x_t, t, abar, "score")


def test_the_loss_regresses_the_parameterisations_target():
    """With the network replaced by the target itself the loss is 0: x0 for "sample", v for "v_prediction"."""
    for prediction in ("sample", "v_prediction", "epsilon"):
        head = tiny_head(prediction=prediction)
        actions, proprio, cond, mask = tiny_batch()
        seen = {}

        def perfect(x_t, t, *_):
            g = torch.Generator().manual_seed(5)
            torch.randint(0, head.cfg.train_steps, (2,), generator=g)          # replays loss()'s draws
            eps = torch.randn(actions.shape, generator=g)
            a = dh._at(head.abar, t, actions)
            seen["x_t"] = x_t
            return {"epsilon": eps, "sample": actions, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * actions}[prediction]
        head.denoise = perfect
        assert head.loss(actions, proprio, cond, mask, generator=torch.Generator().manual_seed(5)).item() < 1e-10


# ----------------------------------------------------------------------------- the head

HEADS = [dict(pooled=False), dict(pooled=True), dict(arch="mlp"), dict(arch="mlp", pooled=True),
         dict(arch="mlp", prediction="sample"), dict(prediction="v_prediction")]


@pytest.mark.parametrize("kw", HEADS)
def test_head_shapes_loss_and_gradients(kw):
    head = tiny_head(**kw)
    actions, proprio, cond, mask = tiny_batch()
    loss = head.loss(actions, proprio, cond, mask)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # time, proprio, cond, actions all reach the loss (pooled to one token, the MLP's attention logits have nothing
    # to choose between: a softmax over one token is 1)
    assert missing == (["mlp.logits.weight", "mlp.logits.bias"] if kw.get("arch") == "mlp" and kw.get("pooled") else [])
    for method, steps in (("ddim", None), ("ddim", 3), ("ddpm", None)):
        chunk = head.sample(proprio, cond, mask, steps=steps, method=method, generator=torch.Generator().manual_seed(0))
        assert chunk.shape == (2, 4, 3) and chunk.abs().max() <= 1   # clip_sample keeps the chunk in [-1, 1]
    with pytest.raises(ValueError):
        head.sample(proprio, cond, mask, steps=3, method="ddpm")
    with pytest.raises(ValueError):
        head.sample(proprio, cond, mask, method="euler")


@pytest.mark.parametrize("arch", ["transformer", "mlp"])
def test_head_without_proprio(arch):
    head = tiny_head(proprio_dim=0, arch=arch)
    actions, _, cond, mask = tiny_batch()
    assert torch.isfinite(head.loss(actions, None, cond, mask))
    assert head.sample(None, cond, mask).shape == (2, 4, 3)


@pytest.mark.parametrize("kw", HEADS[:4])
def test_masked_cond_tokens_are_ignored(kw):
    head = tiny_head(**kw)
    actions, proprio, cond, mask = tiny_batch()
    t = torch.tensor([3, 7])
    out = lambda c: head.denoise(actions, t, proprio, *head.encode_cond(c, mask))
    sample = lambda c: head.sample(proprio, c, mask, generator=torch.Generator().manual_seed(0))
    changed = cond.clone()
    changed[0, :2] = 100 * torch.randn(2, 6)                         # the two padded tokens of example 0
    assert torch.allclose(out(cond), out(changed), atol=1e-6) and torch.allclose(sample(cond), sample(changed))
    real = cond.clone()
    real[0, 4] = 3 * torch.randn(6)                                  # a real token (the last one, used when pooled);
                                                                     # a constant shift would vanish in the LayerNorm
    assert not torch.allclose(out(cond)[0], out(real)[0], atol=1e-4)
    assert torch.allclose(out(cond)[1], out(real)[1], atol=1e-6)     # examples do not leak into each other


def test_pooled_takes_the_last_real_token():
    head = tiny_head(pooled=True)
    cond = torch.randn(3, 5, 6)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [0, 1, 0, 0, 0]], dtype=torch.bool)  # left, right, single
    tok, tok_mask = head.encode_cond(cond, mask)
    assert tok.shape == (3, 1, 16) and tok_mask.all()
    assert torch.allclose(tok[:, 0], head.cond_in(cond[[0, 1, 2], [4, 2, 1]]))


@pytest.mark.parametrize("kw", [dict(), dict(arch="mlp", prediction="sample"), dict(prediction="v_prediction")])
def test_head_memorises_one_chunk(kw):
    """Trained on a single (condition, chunk) pair, DDIM-10 from pure noise must return that chunk, whatever the
    network predicts (ε, x0 or v) and whichever denoiser."""
    head = tiny_head(train_steps=20, **kw)
    actions, proprio, cond, mask = tiny_batch(B=1)
    batch = [x.expand(64, *x.shape[1:]) for x in (actions, proprio, cond, mask)]
    err = lambda: (head.sample(*batch[1:], generator=torch.Generator().manual_seed(1)) - actions).abs().amax((1, 2))
    before = err()                                                   # [64] worst error per sampled chunk
    opt, g = torch.optim.AdamW(head.parameters(), lr=1e-2), torch.Generator().manual_seed(0)
    for _ in range(400):
        loss = head.loss(*batch, generator=g)
        opt.zero_grad(); loss.backward(); opt.step()
    after = err()
    assert before.median() > 0.3                                     # untrained: far off
    # most samples land on the chunk (a few start from noise the tiny net handles badly)
    assert after.median() < 0.05 and after.quantile(0.9) < 0.1, after.quantile(torch.tensor([0.5, 0.9]))


# ----------------------------------------------------------------------------- the demo

def test_mode_metrics_on_hand_cases():
    c = torch.tensor([-0.5, 0.0, 1.0])
    upper = torch.stack([0.8 * c, dh.branch(c)], -1)
    m = dh.mode_metrics(c, upper * torch.tensor([1.0, -1.0]), 0.1)
    assert m["hit"] == 1 and m["lower"] == 1 and m["upper"] == 0 and m["dist"] == pytest.approx(0, abs=1e-7)
    m = dh.mode_metrics(c, upper * torch.tensor([1.0, 0.0]), 0.1)  # the conditional mean: on neither mode
    assert m["hit"] == 0 and m["dist"] == pytest.approx(dh.branch(c).mean().item())


def test_demo_runs_small(tmp_path, capsys):
    from PIL import Image
    png, md = tmp_path / "toy.png", tmp_path / "toy.md"
    cfg = dh.parse_config(["--steps", "20", "--n-samples", "40", "--train-steps", "20", "--ddim-steps", "4",
                           "--png", str(png), "--md", str(md), "--threads", "0"])
    assert cfg.steps == 20 and cfg.ddim_steps == 4 and cfg.lr == 1e-3
    dh.main(cfg)
    table, printed = md.read_text(), capsys.readouterr().out
    for row in ("| data (reference) |", "| DDPM-20 |", "| DDIM-4 |", "| MSE regressor |"):
        assert row in table and row in printed
    assert Image.open(png).size == (4 * 300, 322)
