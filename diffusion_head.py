"""
diffusion_head.py -- the VLA's action head: a DDPM/DDIM denoiser over an action chunk that cross-attends to a
frozen backbone's hidden states (the paper: "a newly initialised diffusion-based action head"). RoboAlign's
head "refers to" GR00T-N1.5, whose head is flow matching (4 Euler steps): DDPM/DDIM here is a faithful reading of
"diffusion-based", not a copy of the GR00T code.

    head = DiffusionHead(HeadConfig(action_dim=7, horizon=10, proprio_dim=8, cond_dim=896))
    loss = head.loss(actions, proprio, cond, cond_mask)   # actions [B,H,A] in [-1,1], proprio [B,P],
                                                          # cond [B,L,C] hidden states, cond_mask [B,L] (True = real)
    chunk = head.sample(proprio, cond, cond_mask, steps=10, method="ddim")   # [B,H,A] in [-1,1]

Reads nothing. The standalone demo fits a two-branch 2-D toy that an MSE regressor averages away and writes
assets/diffusion_toy.png (pillow) and bench/results/diffusion_toy.md (the table it prints):

    python diffusion_head.py                    # DDPM-100 vs DDIM-10 vs MSE regressor: 25-40 s on a shared 2-core CPU
    python diffusion_head.py --steps 4000 --ddim-steps 4 --schedule linear
    python -m pytest tests/test_diffusion_head.py

Choices. Equations are from DDPM (Ho et al. 2020, arXiv 2006.11239), DDIM (Song et al. 2021, arXiv 2010.02502)
and iDDPM (Nichol & Dhariwal 2021, arXiv 2102.09672):
- T = 100 training steps (Diffusion Policy, CogACT). Code index t = 0..T-1 is the papers' t = 1..T, and
  ᾱ_{-1} := 1 (the data). The schedule is stored as ᾱ only; α_t = ᾱ_t / ᾱ_{t-1}, β_t = 1 - α_t.
- Schedule `squaredcos_cap_v2` (default): iDDPM's cosine ᾱ (eq. 17), β capped at 0.999 (as diffusers).
  `linear`: DDPM's β 1e-4..0.02, defined for T = 1000, scaled by 1000/T so that ᾱ_T is still ≈ 0 at T = 100.
- What the network predicts (`prediction`, diffusers' names): "epsilon" — DDPM's ε-parameterisation, loss =
  L_simple (eq. 14); "sample" — x0 directly (Diffusion Policy's `prediction_type="sample"`, and what the VLA uses
  by default: on a small head trained for minutes the ε-head's small errors at high noise become large x0 errors,
  and closed-loop success measured far lower); "v_prediction" — v = √ᾱ ε − √(1−ᾱ) x0 (Salimans & Ho 2022).
  In every case: t ~ U{0..T-1} per example, ε ~ N(0, I), plain MSE on the target averaged over every element,
  uniform weighting over t. The sampler converts any output to ε first, so DDPM/DDIM below are unchanged.
- Every reverse step clamps the predicted x0 (eq. 15) to [-1, 1] (`clip_sample`, as Diffusion Policy /
  diffusers), so actions must be normalised into [-1, 1]. DDPM: posterior q(x_{t-1} | x_t, x0) (eq. 6-7) with
  σ_t² = β̃_t ("fixed_small"). DDIM (eq. 12) re-derives ε from the clamped x0 (diffusers'
  use_clipped_model_output=True), which makes DDIM with η = 1 and K = T exactly DDPM (a test checks it).
- DDIM default: K = 10 steps (CogACT; Diffusion Policy on the real robot), η = 0 (deterministic), "leading"
  timesteps 90, 80, ..., 0 (diffusers' default with steps_offset 0, used by Diffusion Policy; CogACT's ADM
  respacing gives the same). It starts pure noise at ᾱ_90 ≈ 0.02 rather than ≈ 0, but ends with a small step
  from t = 0; on the toy it beats "trailing" (99, 89, ..., 9; Lin et al. 2024): on-mode ~90% vs 89% at
  K = 10 and 70% vs 56% at K = 5.
- Denoiser: pre-LN transformer over [time token, proprio token, H action tokens] with learned positions; the
  timestep enters in-context as a token (CogACT's choice; DiT's adaLN is the common alternative). Each block:
  self-attention (bidirectional), cross-attention to the conditioning tokens, MLP. Conditioning tokens are
  LayerNorm-ed then projected once (GR00T normalises its VLM features too: middle-layer LLM states carry a few
  huge outlier dimensions). Padded tokens (cond_mask False) receive no attention; every example needs ≥ 1 real one.
- pooled=True conditions on ONE token: the last real token of each prompt (left or right padding). It is the
  analogue of CogACT's "cognition" token (the hidden state at the EOS after the prompt), which in a causal
  backbone has attended to the whole prompt. (A masked mean is the other common choice.)
"""
import math
import os
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import config
from config import arg


@dataclass
class Config:
    steps: int = arg(1500, "training steps of the toy demo (diffusion head and MSE regressor alike)")
    batch: int = arg(256, "toy examples per training step (fresh samples every step)")
    lr: float = arg(1e-3, "AdamW learning rate, decayed linearly to 0")
    d_model: int = arg(64, "width of the toy denoiser")
    n_layers: int = arg(2, "transformer blocks of the toy denoiser")
    train_steps: int = arg(100, "diffusion steps T; DDPM samples with all T")
    ddim_steps: int = arg(10, "DDIM sampling steps K")
    schedule: str = arg("squaredcos_cap_v2", "noise schedule: squaredcos_cap_v2 or linear")
    n_samples: int = arg(1000, "samples per method, conditions on an even grid over [-1, 1]")
    radius: float = arg(0.1, "a sample counts as on a mode within this distance of it")
    seed: int = arg(0, "seed for data, initialisation and sampling")
    threads: int = arg(1, "torch CPU threads for the demo (0: torch's default); tiny tensors gain nothing from more")
    png: str = arg("assets/diffusion_toy.png", "scatter plot of the samples")
    md: str = arg("bench/results/diffusion_toy.md", "Markdown table of the figures")


def parse_config(argv=None) -> Config:
    return config.parse_config(Config, argv, __doc__)


# ----------------------------------------------------------------------------- schedule and sampling math

def cosine_schedule(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """ᾱ [T] (float64) of diffusers' `squaredcos_cap_v2`: β_i = min(1 - f((i+1)/T) / f(i/T), 0.999)."""
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2       # iDDPM eq. 17 (ᾱ up to the f(0) factor)
    betas = torch.tensor([min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)], dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)                                 # ᾱ_t = Π_{s≤t} (1 - β_s)  (DDPM §2)


def linear_schedule(T: int, beta_1: float = 1e-4, beta_T: float = 0.02) -> torch.Tensor:
    """ᾱ [T] (float64) of DDPM's linear β (§4), rescaled by 1000/T as in iDDPM's code."""
    betas = torch.linspace(beta_1 * 1000 / T, beta_T * 1000 / T, T, dtype=torch.float64).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0)


def make_schedule(name: str, T: int) -> torch.Tensor:
    if name == "squaredcos_cap_v2": return cosine_schedule(T)
    if name == "linear": return linear_schedule(T)
    raise ValueError(f"unknown schedule {name!r}: use squaredcos_cap_v2 or linear")


def _at(abar, t, x):
    """ᾱ_t shaped to broadcast against x [B, ...]; t is an int or a [B] long tensor, and t = -1 gives ᾱ = 1."""
    a = F.pad(abar, (1, 0), value=1.0)[t + 1]                          # pad so that index -1 is the data's ᾱ = 1
    return a.reshape(-1, *[1] * (x.dim() - 1)).to(x.dtype)


def q_sample(x0, t, noise, abar):
    """x_t ~ q(x_t | x0): √ᾱ_t x0 + √(1-ᾱ_t) ε (DDPM eq. 4). x0, noise [B, ...]; t [B] or int."""
    a = _at(abar, t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def predict_x0(x_t, t, eps, abar):
    """Eq. 4 solved for x0 given the predicted noise: (x_t - √(1-ᾱ_t) ε) / √ᾱ_t (DDPM eq. 15)."""
    a = _at(abar, t, x_t)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def posterior_mean_var(x0, x_t, t, abar):
    """Mean and variance of q(x_{t-1} | x_t, x0) (DDPM eq. 6-7). At t = 0 the mean is x0 and the variance 0."""
    a, a_prev = _at(abar, t, x_t), _at(abar, t - 1, x_t)
    beta = 1 - a / a_prev                                              # β_t; α_t = 1 - β_t
    mean = (a_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - a_prev) * x_t) / (1 - a)   # μ̃_t, eq. 7
    var = (1 - a_prev) / (1 - a) * beta                                # β̃_t, eq. 7
    return mean, var


def ddpm_step(x_t, eps, t: int, abar, noise, clip: bool = True):
    """One ancestral step x_t -> x_{t-1} (DDPM Algorithm 2, written through x0 so that x0 can be clamped):
    x_{t-1} = μ̃_t(x0, x_t) + σ_t z with σ_t² = β̃_t (§3.2). Without clipping the mean equals eq. 11."""
    x0 = predict_x0(x_t, t, eps, abar)
    if clip: x0 = x0.clamp(-1, 1)
    mean, var = posterior_mean_var(x0, x_t, t, abar)
    return mean + var.sqrt() * noise                                   # var = 0 at t = 0: the last step adds no noise


def ddim_step(x_t, eps, t: int, t_prev: int, abar, eta: float = 0.0, noise=None, clip: bool = True):
    """x_t -> x_{t_prev} for any earlier t_prev (-1 = the data), DDIM eq. 12 with σ_t(η) of eq. 16:
    x_prev = √ᾱ_prev x0 + √(1 - ᾱ_prev - σ²) ε + σ z. η = 0: deterministic; η = 1: DDPM's variance."""
    a, a_prev = _at(abar, t, x_t), _at(abar, t_prev, x_t)
    x0 = predict_x0(x_t, t, eps, abar)
    if clip:
        x0 = x0.clamp(-1, 1)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()                   # the ε that is consistent with the clamped x0
    sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()   # eq. 16
    x = a_prev.sqrt() * x0 + (1 - a_prev - sigma ** 2).clamp(min=0).sqrt() * eps
    return x + sigma * noise if eta > 0 else x


def eps_from_output(out, x_t, t, abar, prediction: str):
    """ε implied by the network's output (ε itself, x0, or v) at x_t, step t [B] or int: the samplers take ε."""
    if prediction == "epsilon":
        return out
    a = _at(abar, t, x_t)
    if prediction == "sample":                                         # x_t = √ᾱ x0 + √(1-ᾱ) ε, solved for ε
        return (x_t - a.sqrt() * out) / (1 - a).sqrt()
    if prediction == "v_prediction":                                   # ε = √(1-ᾱ) x_t + √ᾱ v
        return (1 - a).sqrt() * x_t + a.sqrt() * out
    raise ValueError(f"unknown prediction {prediction!r}: use epsilon, sample or v_prediction")


def ddim_timesteps(T: int, K: int) -> list:
    """K "leading" steps, every (T // K)-th from 0: T=100, K=10 -> [90, 80, ..., 0]; K = T -> [T-1, ..., 0]."""
    if not 1 <= K <= T: raise ValueError(f"DDIM needs 1 <= steps <= T = {T}, got {K}")
    return [i * (T // K) for i in range(K)][::-1]


# ----------------------------------------------------------------------------- the denoiser

@dataclass
class HeadConfig:
    action_dim: int                    # A, action dimensions
    horizon: int                       # H, actions per chunk
    proprio_dim: int                   # P, proprioceptive state; 0 = no proprio token
    cond_dim: int                      # C, backbone hidden size
    d_model: int = 128                 # transformer width (even: the timestep features are cos/sin pairs)
    n_layers: int = 4
    n_heads: int = 4
    pooled: bool = False               # True: condition on the last real token only (CogACT-style)
    train_steps: int = 100             # T
    schedule: str = "squaredcos_cap_v2"
    clip_sample: bool = True           # clamp the predicted x0 to [-1, 1] at every reverse step
    prediction: str = "epsilon"        # what the denoiser outputs: epsilon | sample (x0) | v_prediction
    arch: str = "transformer"          # the denoiser: transformer (tokens, cross-attention) | mlp (see MLPDenoiser)
    n_queries: int = 4                 # mlp: learned queries that attention-pool the condition tokens
    cond_dropout: float = 0.0          # mlp: dropout on the pooled condition while training (a regulariser)
    cond_noise: float = 0.0            # Gaussian noise (std) on the normalised condition tokens while training


def timestep_embedding(t, dim: int, max_period: float = 10000.0):
    """Sinusoidal features of integer steps t [B] -> [B, dim] (the Transformer's encoding, as in DDPM)."""
    freqs = torch.exp(-math.log(max_period) * torch.arange(dim // 2, device=t.device) / (dim // 2))
    args = t.float()[:, None] * freqs[None]                            # [B, dim/2]
    return torch.cat([args.cos(), args.sin()], -1)


class Attention(nn.Module):
    """Multi-head attention of x [B,N,D] over ctx [B,M,D]; mask [B,M] bool, True = may be attended to."""
    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.n_heads, self.q, self.kv, self.proj = n_heads, nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(d, d)

    def forward(self, x, ctx, mask=None):
        B, N, D = x.shape
        heads = lambda z: z.view(B, z.shape[1], self.n_heads, D // self.n_heads).transpose(1, 2)  # [B, h, len, D/h]
        q, (k, v) = heads(self.q(x)), map(heads, self.kv(ctx).chunk(2, -1))
        m = None if mask is None else mask[:, None, None, :]           # [B, 1, 1, M]: same for all heads and queries
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=m)       # [B, h, N, D/h]
        return self.proj(y.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    """Pre-LN block: self-attention over the chunk's tokens, cross-attention to the condition, MLP."""
    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(d), Attention(d, n_heads)
        self.ln2, self.xattn = nn.LayerNorm(d), Attention(d, n_heads)
        self.ln3, self.mlp = nn.LayerNorm(d), nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x, cond, cond_mask):
        h = self.ln1(x)
        x = x + self.attn(h, h)                                        # no mask: every chunk token is real
        x = x + self.xattn(self.ln2(x), cond, cond_mask)
        return x + self.mlp(self.ln3(x))


class ResBlock(nn.Module):
    """Pre-LN residual MLP block (x + W2 GELU(W1 LN(x)))."""
    def __init__(self, d: int):
        super().__init__()
        self.ln, self.mlp = nn.LayerNorm(d), nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        return x + self.mlp(self.ln(x))


class MLPDenoiser(nn.Module):
    """The cheap denoiser (arch="mlp"). The condition tokens (LayerNorm-ed backbone states [B, L, C]) are pooled
    once into n_queries = Q vectors by learned attention (a logit per token and query, masked softmax over the
    tokens, a weighted sum of the raw tokens: no per-token projection, so L·C costs ~nothing), then one vector
    [noisy chunk (H·A), timestep, proprio, pooled condition] goes through residual MLP blocks to the output chunk.
    Per training step it costs a fraction of the transformer (which projects and attends over every token in every
    block), which is what lets a CPU fit it to thousands of frames in minutes; IDQL and Diffusion-QL use MLP
    denoisers for the same reason. Width d_model, depth n_layers."""
    def __init__(self, cfg: HeadConfig):
        super().__init__()
        d, ha = cfg.d_model, cfg.horizon * cfg.action_dim
        self.logits = nn.Linear(cfg.cond_dim, cfg.n_queries)            # one attention logit per token and query
        self.pool_out = nn.Linear(cfg.n_queries * cfg.cond_dim, d)
        self.drop = nn.Dropout(cfg.cond_dropout)
        self.inp = nn.Linear(ha + 2 * d + (d if cfg.proprio_dim else 0), d)
        self.blocks = nn.Sequential(*(ResBlock(d) for _ in range(cfg.n_layers)))
        self.out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, ha))

    def forward(self, x_t, t_emb, p_emb, cond, cond_mask):
        B = x_t.shape[0]
        w = self.logits(cond).masked_fill(~cond_mask[..., None], float("-inf")).softmax(1)   # [B, L, Q]
        pooled = self.drop(self.pool_out((w.transpose(1, 2) @ cond).reshape(B, -1)))       # [B, Q, C] -> [B, d]
        parts = [x_t.reshape(B, -1), t_emb, pooled] + ([p_emb] if p_emb is not None else [])
        return self.out(self.blocks(self.inp(torch.cat(parts, -1)))).view_as(x_t)


class DiffusionHead(nn.Module):
    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg, d = cfg, cfg.d_model
        if cfg.arch not in ("transformer", "mlp"):
            raise ValueError(f"unknown arch {cfg.arch!r}: use transformer or mlp")
        # ᾱ stays a float64 attribute, not a buffer, so that head.to(torch.bfloat16) cannot round it
        self.abar = make_schedule(cfg.schedule, cfg.train_steps)
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.proprio_in = nn.Linear(cfg.proprio_dim, d) if cfg.proprio_dim else None
        if cfg.arch == "mlp":               # the denoiser pools the normalised tokens itself
            self.cond_in, self.mlp = nn.LayerNorm(cfg.cond_dim), MLPDenoiser(cfg)
            return
        self.cond_in = nn.Sequential(nn.LayerNorm(cfg.cond_dim), nn.Linear(cfg.cond_dim, d))
        self.action_in = nn.Linear(cfg.action_dim, d)
        self.pos = nn.Parameter(0.02 * torch.randn(1, 1 + (cfg.proprio_dim > 0) + cfg.horizon, d))
        self.blocks = nn.ModuleList(Block(d, cfg.n_heads) for _ in range(cfg.n_layers))
        self.ln_f, self.action_out = nn.LayerNorm(d), nn.Linear(d, cfg.action_dim)

    def encode_cond(self, cond, cond_mask):
        """cond [B,L,C], cond_mask [B,L] -> tokens [B,L',d] and their mask [B,L'] (L' = 1 if pooled)."""
        if self.cfg.pooled:                                            # last True per row, left or right padding
            last = cond_mask.shape[1] - 1 - cond_mask.flip(1).float().argmax(1)   # [B]
            cond = cond[torch.arange(cond.shape[0], device=cond.device), last][:, None]  # [B, 1, C]
            cond_mask = cond_mask.new_ones(cond.shape[0], 1)
        return self.cond_in(cond), cond_mask

    def denoise(self, x_t, t, proprio, cond_tok, cond_mask):
        """The network's output [B,H,A] (ε, x0 or v: cfg.prediction) from x_t [B,H,A], t [B] long, proprio [B,P]
        (or None if P = 0) and the encoded cond tokens."""
        if self.cfg.arch == "mlp":
            p = self.proprio_in(proprio) if self.proprio_in is not None else None
            return self.mlp(x_t, self.time_mlp(timestep_embedding(t, self.cfg.d_model)), p, cond_tok, cond_mask)
        tokens = [self.time_mlp(timestep_embedding(t, self.cfg.d_model))[:, None]]   # [B, 1, d]
        if self.proprio_in is not None: tokens.append(self.proprio_in(proprio)[:, None])   # [B, 1, d]
        tokens.append(self.action_in(x_t))                             # [B, H, d]
        x = torch.cat(tokens, 1) + self.pos                            # [B, 1 (+1) + H, d]
        for block in self.blocks: x = block(x, cond_tok, cond_mask)
        return self.action_out(self.ln_f(x[:, -self.cfg.horizon:]))    # read the output off the action tokens

    def loss(self, actions, proprio, cond, cond_mask, generator=None):
        """MSE between the network's output at x_t = q_sample(actions, t, ε) and its target (ε: DDPM's L_simple,
        eq. 14; x0; or v), t uniform per example."""
        B, dev = actions.shape[0], actions.device
        t = torch.randint(0, self.cfg.train_steps, (B,), device=dev, generator=generator)
        noise = torch.randn(actions.shape, device=dev, generator=generator)
        abar = self.abar.to(dev)
        x_t = q_sample(actions, t, noise, abar)
        tok, tok_mask = self.encode_cond(cond, cond_mask)
        if self.cfg.cond_noise and self.training:      # augmentation: the head may not lean on any one feature's details
            tok = tok + self.cfg.cond_noise * torch.randn(tok.shape, device=dev, generator=generator)
        out = self.denoise(x_t, t, proprio, tok, tok_mask).float()
        if self.cfg.prediction == "sample":
            target = actions
        elif self.cfg.prediction == "v_prediction":
            a = _at(abar, t, actions)
            target = a.sqrt() * noise - (1 - a).sqrt() * actions
        else:
            target = noise
        return F.mse_loss(out, target)

    @torch.no_grad()
    def sample(self, proprio, cond, cond_mask, steps=None, method="ddim", eta=0.0, generator=None):
        """An action chunk [B,H,A] in [-1,1] from x_T ~ N(0, I). method "ddim": `steps` (default 10) leading
        steps with η = eta; "ddpm": ancestral sampling over all T steps (steps must be None or T)."""
        B, dev, T, clip = cond.shape[0], cond.device, self.cfg.train_steps, self.cfg.clip_sample
        abar, ctx = self.abar.to(dev), self.encode_cond(cond, cond_mask)   # the condition is encoded once
        randn = lambda: torch.randn((B, self.cfg.horizon, self.cfg.action_dim), device=dev, generator=generator)
        pred = self.cfg.prediction
        eps_at = lambda x, t: eps_from_output(self.denoise(x, torch.full((B,), t, device=dev), proprio, *ctx).float(),
                                              x, t, abar, pred)
        x = randn()
        if method == "ddpm":
            if steps not in (None, T): raise ValueError(f"DDPM samples with all T = {T} steps, got steps={steps}")
            for t in range(T - 1, -1, -1):
                x = ddpm_step(x, eps_at(x, t), t, abar, randn(), clip)
        elif method == "ddim":
            ts = ddim_timesteps(T, steps or 10)
            for t, t_prev in zip(ts, ts[1:] + [-1]):
                x = ddim_step(x, eps_at(x, t), t, t_prev, abar, eta, randn() if eta > 0 else None, clip)
        else:
            raise ValueError(f"unknown method {method!r}: use ddim or ddpm")
        return x                                                       # the last step returns the clamped x0


# ----------------------------------------------------------------------------- the toy demo

def branch(c):
    """|y| of the two modes at condition c: the modes are (0.8 c, +branch(c)) and (0.8 c, -branch(c))."""
    return 0.3 + 0.4 * c ** 2


def toy_data(c, gen, noise=0.02):
    """2-D actions [N,2] for conditions c [N]: a fair coin picks the branch. The conditional mean (0.8 c, 0)
    that an MSE regressor converges to lies on neither mode."""
    sign = torch.randint(0, 2, c.shape, generator=gen) * 2 - 1
    return torch.stack([0.8 * c, sign * branch(c)], -1) + noise * torch.randn(len(c), 2, generator=gen)


def toy_cond(c):
    """The scalar condition as one 8-dim "backbone token" [N,1,8] of sin/cos features (a 1-dim token would be
    erased by the head's LayerNorm) and its mask [N,1]."""
    k = torch.arange(1, 5) * math.pi / 2
    feats = torch.cat([torch.sin(c[:, None] * k), torch.cos(c[:, None] * k)], -1)
    return feats[:, None], torch.ones(len(c), 1, dtype=torch.bool)


def mode_metrics(c, a, radius):
    """Distances of samples a [N,2] to the two true modes at c [N]: hit rates per mode and mean nearest distance."""
    up = torch.stack([0.8 * c, branch(c)], -1)
    d_up, d_lo = (a - up).norm(dim=-1), (a - up * torch.tensor([1.0, -1.0])).norm(dim=-1)
    d = torch.minimum(d_up, d_lo)
    return dict(hit=(d < radius).float().mean().item(), upper=(d_up < radius).float().mean().item(),
                lower=(d_lo < radius).float().mean().item(), dist=d.mean().item())


def save_png(path, panels, size=300, pad=12, top=22):
    """One scatter panel per (title, c [N], a [N,2]); points coloured by c (blue -1 .. red +1), modes in grey."""
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (size * len(panels), size + top), "white")
    draw = ImageDraw.Draw(img)
    xy = lambda i, x, y: (i * size + pad + (x + 1) / 2 * (size - 2 * pad), top + pad + (1 - y) / 2 * (size - 2 * pad))
    grid = torch.linspace(-1, 1, 100).tolist()
    for i, (title, c, a) in enumerate(panels):
        draw.rectangle([xy(i, -1, 1), xy(i, 1, -1)], outline="black")
        draw.text((i * size + pad, 5), title, fill="black")
        for s in (1, -1): draw.line([xy(i, 0.8 * u, s * branch(u)) for u in grid], fill=(205, 205, 205), width=5)
        for cc, (x, y) in zip(c.tolist(), a.clamp(-1, 1).tolist()):
            X, Y = xy(i, x, y)
            draw.ellipse([X - 1.5, Y - 1.5, X + 1.5, Y + 1.5], fill=(int(127.5 * (1 + cc)), 60, int(127.5 * (1 - cc))))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    img.save(path)


def main(cfg: Config):
    if cfg.threads: torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    head = DiffusionHead(HeadConfig(action_dim=2, horizon=1, proprio_dim=0, cond_dim=8, d_model=cfg.d_model,
                                    n_layers=cfg.n_layers, train_steps=cfg.train_steps, schedule=cfg.schedule))
    mlp = nn.Sequential(nn.Linear(8, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(), nn.Linear(128, 2))
    opts = [torch.optim.AdamW(m.parameters(), lr=cfg.lr, fused=True) for m in (head, mlp)]   # fused: ~30% faster on CPU
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1 - s / cfg.steps) for o in opts]
    print(f"toy: a = (0.8c, ±(0.3 + 0.4c²)) + N(0, 0.02²), c ~ U[-1, 1]; head {sum(p.numel() for p in head.parameters()):,}"
          f" params ({cfg.schedule}, T={cfg.train_steps}), MSE regressor {sum(p.numel() for p in mlp.parameters()):,}")
    for step in range(cfg.steps):
        c = torch.rand(cfg.batch, generator=gen) * 2 - 1
        a, (cond, mask) = toy_data(c, gen), toy_cond(c)
        losses = [head.loss(a[:, None], None, cond, mask, generator=gen), F.mse_loss(mlp(cond[:, 0]), a)]
        for opt, sched, loss in zip(opts, scheds, losses):
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); sched.step()
        if step % 500 == 0 or step == cfg.steps - 1:
            print(f"step {step:5d} | diffusion ε-MSE {losses[0].item():.4f} | regressor MSE {losses[1].item():.4f}")
    train_s = time.perf_counter() - t_start

    c = torch.linspace(-1, 1, cfg.n_samples)                           # evaluation conditions, an even grid
    cond, mask = toy_cond(c)
    K, T = cfg.ddim_steps, cfg.train_steps
    methods = [("data (reference)", lambda: toy_data(c, gen)),
               (f"DDPM-{T}", lambda: head.sample(None, cond, mask, method="ddpm", generator=gen)[:, 0]),
               (f"DDIM-{K}", lambda: head.sample(None, cond, mask, steps=K, method="ddim", generator=gen)[:, 0]),
               ("MSE regressor", lambda: mlp(cond[:, 0]).detach())]
    rows, panels = [], []
    for name, fn in methods:
        t0 = time.perf_counter()
        a = fn()
        rows.append((name, mode_metrics(c, a, cfg.radius), time.perf_counter() - t0))
        panels.append((name, c, a))
    save_png(cfg.png, panels)
    r = cfg.radius
    table = [f"| samples ({cfg.n_samples}) | within {r} of a mode | near upper mode | near lower mode "
             f"| mean distance to nearest mode | sampling time |", "|---|---|---|---|---|---|"]
    table += [f"| {n} | {m['hit']:.1%} | {m['upper']:.1%} | {m['lower']:.1%} | {m['dist']:.3f} | "
              f"{'–' if n.startswith('data') else f'{s:.2f} s'} |" for n, m, s in rows]
    wall = time.perf_counter() - t_start
    note = (f"`python diffusion_head.py` ({cfg.steps} steps, batch {cfg.batch}, {cfg.schedule}): training "
            f"{train_s:.1f} s, total {wall:.1f} s on {torch.get_num_threads()} CPU thread(s).")
    print("\n".join(table) + "\n\n" + note)
    os.makedirs(os.path.dirname(cfg.md) or ".", exist_ok=True)
    with open(cfg.md, "w") as f:
        f.write("\n".join(table) + f"\n\n{note}\n\n![DDPM vs DDIM vs MSE on the toy]({cfg.png})\n")
    print(f"wrote {cfg.png} and {cfg.md}")


if __name__ == "__main__":
    main(parse_config())
