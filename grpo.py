"""Stage 2 — GRPO: align the SFT model's reasoning with action accuracy (RoboAlign's contribution).

Reads the Stage-1 checkpoint (`--init`, written by sft.py) and the demonstration episodes it reserved for this
stage (its `stage2.json`); writes `--out DIR`: a checkpoint in sft.py's layout (so `model.load_backbone`,
vla_train.py and eval_libero.py load it), `metrics.json` (held-out figures before/after, the paired change, the
image-shuffle control, config) and `metrics.jsonl` (one line per rollout round).

    python grpo.py                                   # default: from out/sft, ~4 min on 2 CPUs (30 rounds) + evaluation
    python grpo.py --lr 1e-5 --beta 0.01 --no-scale-std --loss-norm sequence --out out/grpo-ablation
    torchrun --nproc_per_node 2 grpo.py --group 8    # DDP (gloo on CPU, nccl on GPU)
    python sft.py --mix caption=0.1,vqa=0.1,reason=0.4,fast=0.1,choice=0.15,trace=0.15 --out out/sft_targets
    python grpo.py --init out/sft_targets --reward choice --out out/grpo_language    # Tab. 6; --reward trace: visual

One round: sample `--rollout-batch` prompts; for each draw `--group` G completions (KV-cache `generate`, one
batched call; temperature `--temperature`, nucleus `--top-p`, top-k off, vision and chat-control tokens
suppressed, stop at <|im_end|>); score each with the reward below; normalise rewards within each group into
advantages; take `--mu` passes of clipped policy-gradient steps over the batch, `--update-batch` prompts per
optimizer step. Every token of a completion shares its advantage.

    r = w·r_f + (1 − w)·r_a        w = --format-weight; 0.5 gives the paper's (r_f + r_a)/2   (see reward())
    A_i = (r_i − mean_g r) / (std_g r + 1e-4)            (--no-scale-std: r_i − mean, Dr. GRPO)
    loss_t = −min(ρ_t A, clip(ρ_t, 1 − ε, 1 + ε_high) A) + β·k3_t,   ρ_t = π_θ(o_t|·) / π_old(o_t|·)
    k3_t = exp(d) − d − 1,  d = log π_ref − log π_θ                 (DeepSeekMath's KL, in the loss)
    loss = Σ_t loss_t / (completion tokens in the update batch, all ranks)   (--loss-norm token, DAPO/TRL)
         or mean over completions of their per-token mean                     (--loss-norm sequence, DeepSeekMath)

The loss value sits near 0 by construction (advantages are centred per group and ρ = 1 at μ = 1): watch the
reward, r_a, the zero-spread fraction and the held-out figures, not the loss. Log-probs for ρ and KL come from one
forward over prompt + completion with the same attention mask and M-RoPE positions as sampling, logits divided
by the sampling temperature and the suppressed tokens masked, so scoring and sampling use the same policy
(top-p < 1 is the one mismatch, as in TRL). With μ = 1 and one update per round π_old is the detached current
policy: no extra forward pass.

Defaults vs the paper (EasyR1: G 5, rollout 512, update 128, lr 1e-6 constant, 1 epoch over 12.8 K BridgeV2
samples, KL 1e-2 low-var, temperature 1.0, top-p 0.99). Here G 8 (more spread per group on a small batch), 16
prompts per round and per step, 30 rounds, lr 1e-4, temperature 0.7, β 0 (TRL's default: no reference copy), top-p
1.0 (ρ exact). Measured on the default SFT checkpoint (384 held-out prompts, paired): 1e-6 moves a 4 M model nowhere
within minutes; at temperature 1.0 no lr from 3e-5 to 3e-4 raised the prefix ratio (−0.02…+0.02), the ~45 sampled
reasoning tokens crediting a right action token's advantage to random words; at 0.7 it rose +0.02…+0.08 over three
seeds. A chunk is ~1.5 FAST tokens, so r_a is nearly all-or-nothing and about half the groups have no reward
spread. Answers here are 41-92 tokens.

Full-size recipe (the paper's numbers, EasyR1's defaults where it is silent; 8× H200 ≈ 1 h in the paper;
full-parameter RL on a 7B model also needs FSDP/ZeRO sharding, which this DDP-only file leaves out):
    torchrun --nproc_per_node 8 grpo.py --init out/sft-7b --out out/grpo-7b --steps 0 --group 5 \\
        --rollout-batch 512 --update-batch 128 --micro-batch 8 --lr 1e-6 --beta 0.01 --top-p 0.99 \\
        --max-new-tokens 2048 --bf16 --grad-ckpt
"""
from __future__ import annotations

import copy
import json
import os
import re
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm
from transformers import GenerationConfig

import config
from config import arg, exits_on_bad_files, read_json, write_jsonl
from data.demos import open_dataset
from model import (QWEN_SPECIALS, configure_optimizers, end_distributed, load_backbone, load_resume, parse_actions,
                   prefix_ratio, save_checkpoint, save_resume, setup_distributed)
from samples import TARGET_KINDS, Frames, Sample, build_samples, collate, target_reward
from sft import paired_change, read_stage2
from sft import evaluate as sft_evaluate


@dataclass
class Config:
    init: str = arg("out/sft", "Stage-1 checkpoint (sft.py --out); its stage2.json names the GRPO episodes")
    out: str = arg("out/grpo", "output checkpoint directory")
    data: str = arg("", "dataset; '' = the one named in --init/stage2.json (same format and no-op filtering)")
    data_format: str = arg("auto", "format of --data: auto | mini | libero_hdf5 | lerobot")
    steps: int = arg(30, "rollout rounds (0: one epoch over the Stage-2 prompts, as the paper)")
    rollout_batch: int = arg(16, "prompts per rollout round, all ranks together (paper 512)")
    update_batch: int = arg(16, "prompts per optimizer step (paper 128): rollout/update steps per pass")
    group: int = arg(8, "completions per prompt G (paper 5)")
    micro_batch: int = arg(64, "completions per forward/backward pass on one rank")
    mu: int = arg(1, "passes over each rollout batch (μ; 1 = on-policy, ρ ≡ 1 in value)")
    lr: float = arg(1e-4, "constant learning rate (paper 1e-6 on the 7B model; see the docstring)")
    weight_decay: float = arg(0.01, "AdamW weight decay (EasyR1 1e-2)")
    grad_clip: float = arg(1.0, "max gradient norm (0: off; EasyR1 1.0)")
    temperature: float = arg(0.7, "sampling temperature; scoring divides the logits by it too (paper 1.0)")
    top_p: float = arg(1.0, "nucleus sampling (1.0: off; EasyR1 0.99); top-k is always off")
    max_new_tokens: int = arg(96, "completion limit, rollouts and evaluation (answers here are 41-92 tokens)")
    reward: str = arg("prefix", "r_a: 'prefix' (the paper's), 'l1' (1 - clipped L1 of the decoded actions), or Tab. 6's "
                      "other targets on their own prompts: 'choice' (language) or 'trace' (visual)")
    format_weight: float = arg(0.5, "w in r = w·r_f + (1 - w)·r_a (0.5: the paper's mean)")
    strict_length: bool = arg(False, "prefix r_a divides by max(target, generated) length: extra tokens cost reward")
    scale_std: bool = arg(True, "divide advantages by the group's std (--no-scale-std: Dr. GRPO)")
    clip_eps: float = arg(0.2, "PPO clip ε (lower side, and upper unless --clip-eps-high)")
    clip_eps_high: float = arg(0.0, "upper clip ε (0: = --clip-eps; DAPO uses 0.28)")
    beta: float = arg(0.0, "k3 KL weight against the frozen --init model (0: no reference is loaded; EasyR1 1e-2)")
    loss_norm: str = arg("token", "'token': Σ token losses / completion tokens of the update batch (DAPO, TRL); "
                                  "'sequence': per-completion mean, then mean over completions (DeepSeekMath)")
    eval: bool = arg(True, "held-out evaluation before and after (--no-eval for smoke runs)")
    eval_prompts: int = arg(384, "held-out reasoning prompts (the val split, chosen as sft.py chooses them)")
    sample_every: int = arg(10, "print one sampled completion in full every N rounds (0: never)")
    save_every: int = arg(0, "write a resumable state every N rounds (0: only the final checkpoint)")
    resume: bool = arg(False, "continue from --out/resume if present")
    bf16: bool = arg(False, "bfloat16 autocast (GPU); CPU runs stay fp32")
    grad_ckpt: bool = arg(False, "gradient checkpointing for the training forward (sampling keeps its KV cache)")
    trust_remote_code: bool = arg(False, "allow a hub checkpoint's own code")
    seed: int = arg(0, "random seed (rank is added)")


def parse_config(argv=None) -> Config:
    return config.parse_config(Config, argv, __doc__)


def check(cfg: Config, world: int) -> None:
    bad = [(cfg.reward not in REWARDS, f"--reward {cfg.reward!r}: choose {', '.join(REWARDS)}"),
           (cfg.loss_norm not in ("token", "sequence"), f"--loss-norm {cfg.loss_norm!r}: choose token or sequence"),
           (cfg.group < 2, "--group must be ≥ 2 (advantages need a spread within the group)"),
           (cfg.update_batch < 1 or cfg.rollout_batch % cfg.update_batch, "--rollout-batch must be a multiple of --update-batch"),
           (cfg.update_batch % world, f"--update-batch {cfg.update_batch} must be a multiple of the {world} ranks"),
           (not 0 <= cfg.format_weight <= 1, "--format-weight must lie in [0, 1]"),
           (cfg.temperature <= 0 or not 0 < cfg.top_p <= 1, "--temperature must be > 0 and --top-p in (0, 1]"),
           (min(cfg.mu, cfg.micro_batch, cfg.max_new_tokens, cfg.rollout_batch) < 1 or cfg.steps < 0,
            "--mu, --micro-batch, --max-new-tokens, --rollout-batch must be ≥ 1 and --steps ≥ 0"),
           (os.path.abspath(cfg.init) == os.path.abspath(cfg.out), "--out must differ from --init")]
    for failed, msg in bad:
        if failed:
            raise SystemExit(f"grpo.py: {msg}")


@dataclass(frozen=True)
class Sizes:
    """The sizes the flags imply, derived once right after parsing and checking (cleanrl's derived fields)."""
    updates: int              # optimizer steps per pass over a rollout batch: rollout_batch / update_batch
    on_policy: bool           # μ = 1 and one update per round: π_old = detached π_θ, no extra forward pass
    per_rank: int             # prompts per rank per round
    steps_per_round: int      # optimizer steps per round over all ranks (μ · updates · world): the metrics' divisor

    @classmethod
    def of(cls, cfg: Config, world: int) -> "Sizes":
        updates = cfg.rollout_batch // cfg.update_batch
        return cls(updates, cfg.mu == 1 and updates == 1, cfg.rollout_batch // world, cfg.mu * updates * world)


# ----------------------------------------------------------------------------- reward
REWARDS = ("prefix", "l1", *TARGET_KINDS)       # choice, trace: Tab. 6's targets, each on its own prompt kind
FORMAT_RE = re.compile(r"<think>(?:(?!</?think>|</?answer>).)+</think>\s*<answer>(?:(?!</?think>|</?answer>).)*</answer>", re.S)


def reward(ids: list[int], text: str, finished: bool, target, vocab: dict, fast=None,
           kind: str = "prefix", format_weight: float = 0.5, strict_length: bool = False) -> tuple[float, float, float]:
    """(r, r_f, r_a) for one completion; never raises. `ids`: the completion's token ids before its first
    <|im_end|>; `text`: those ids decoded with special tokens kept; `finished`: <|im_end|> was generated;
    `target`: the demonstration chunk's FAST ids ('prefix', 'l1'), or the sample's target text ('choice': the
    right letter, 'trace': the gripper's waypoints). r = w·r_f + (1 − w)·r_a.

    r_f ∈ {0, 1}: 1 iff the completion stopped by itself and its text is exactly <think>T</think><answer>A</answer>
      (whitespace allowed between the two blocks, as EasyR1's check), T non-empty, no think/answer tag inside
      T or A, nothing before or after. A truncated completion scores r_f = 0.
    r_a is computed from token ids, never from re-tokenised text, and whatever r_f is (as EasyR1's scorer):
      * the action block is the ids strictly between <ACTION_START> and <ACTION_END>. Missing marker, markers in
        the wrong order, or a duplicated marker (more than one of either) → r_a = 0. Any non-action id inside the
        block (a parse failure) → r_a = 0. An empty block → r_a = 0.
      * 'prefix' (the paper): L = length of the longest common prefix of block and target; first token wrong →
        L = 0 → r_a = 0. L ≤ len(block), so a block shorter than the target earns at most len(block)/m.
        r_a = L/m (m = target length): extra tokens after a full match still earn 1, as the paper's formula
        says; strict_length divides by max(m, len(block)) instead, so every extra token costs reward.
      * 'l1': 1 − min(1, mean |a − â|) of the decoded chunks in normalised units (FastTokenizer.normalize:
        q01..q99 → −1..1; the L1 sft.evaluate reports), the block decoded relaxed (padded/truncated).
    'choice' and 'trace' (Tab. 6's language and visual targets) score the first answer block's text against the
    sample's target (samples.target_reward: the right letter; waypoints within 5 grid units, a missing one costs 1).
    """
    r_f = float(finished and FORMAT_RE.fullmatch(text) is not None)
    if kind in TARGET_KINDS:
        r_a = target_reward(kind, text, target)
        return format_weight * r_f + (1 - format_weight) * r_a, r_f, r_a
    s, e = vocab["action_start"], vocab["action_end"]
    block = parse_actions(ids, vocab) if ids.count(s) == 1 and ids.count(e) == 1 else None
    r_a = 0.0
    if block and kind == "prefix":
        r_a = prefix_ratio(block, target) * (len(target) / max(len(target), len(block)) if strict_length else 1.0)
    elif block and kind == "l1":
        (dec, tgt), _ = fast.decode([block, target], relaxed=True)
        r_a = 1.0 - min(1.0, float(np.abs(fast.normalize(dec) - fast.normalize(tgt)).mean()))
    return format_weight * r_f + (1 - format_weight) * r_a, r_f, r_a


# ----------------------------------------------------------------------------- advantages and loss
def group_advantages(r: torch.Tensor, scale_std: bool = True, eps: float = 1e-4):
    """r [n, G] rewards, one row per prompt → (A [n, G], zero_spread [n] bool). A = r − mean of its group,
    divided by the group's std (Bessel-corrected, as TRL) + eps unless scale_std is off (Dr. GRPO). A group
    whose rewards are all equal gets A = 0 exactly: it carries no learning signal (counted and logged)."""
    a = r - r.mean(1, keepdim=True)
    if scale_std:
        a = a / (r.std(1, keepdim=True) + eps)
    flat = (r.max(1).values - r.min(1).values) < 1e-6
    return a.masked_fill(flat[:, None], 0.0), flat


def k3(ref_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(π_θ ‖ π_ref) estimate exp(d) − d − 1, d = log π_ref − log π_θ: unbiased, ≥ 0, 0 iff equal."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def grpo_loss(logp, old_logp, adv, mask, n_norm: float, eps_low=0.2, eps_high=0.2, ref_logp=None, beta=0.0,
              norm="token"):
    """logp, old_logp, ref_logp [N, C] per-token log-probs; adv [N]; mask [N, C] bool (completion up to and
    including its first EOS). Returns (loss, clipped [N, C] bool). n_norm: 'token' → the update batch's masked
    tokens over all ranks / world size; 'sequence' → its completions / world size. DDP averages gradients over
    ranks, so the result is the gradient of the global token (or completion) mean."""
    ratio = torch.exp(logp - old_logp)                                        # [N, C], ≡ 1 in value when on-policy
    a = adv[:, None]
    per_tok = -torch.minimum(ratio * a, ratio.clamp(1 - eps_low, 1 + eps_high) * a)
    if beta:
        per_tok = per_tok + beta * k3(ref_logp, logp)
    per_tok = torch.where(mask, per_tok, 0.0)                                 # nothing after the first EOS
    if norm == "token":
        loss = per_tok.sum() / n_norm
    else:
        loss = (per_tok.sum(1) / mask.sum(1).clamp(min=1)).sum() / n_norm
    clipped = mask & (((ratio < 1 - eps_low) & (a < 0)) | ((ratio > 1 + eps_high) & (a > 0)))
    return loss, clipped


# ----------------------------------------------------------------------------- rollouts and scoring
NEG = -1e4                                     # logit of a suppressed token: exp() is 0, and no inf − inf = nan


def suppressed_ids(tok, model) -> list[int]:
    """Never sampled: Qwen's chat-control and vision tokens (a sampled <|image_pad|> breaks the next forward)
    and embedding rows past the tokenizer. <|im_end|> stays: it is the EOS."""
    ids = tok.convert_tokens_to_ids([t for t in QWEN_SPECIALS if t != "<|im_end|>"])
    return sorted(set(ids) | set(range(len(tok), model.config.text_config.vocab_size)))


def repeat_group(inp: dict, G: int) -> dict:
    """Each prompt G times, adjacent (rows iG..iG+G−1 are prompt i's group). pixel_values [Σ patches, d] is
    repeated per image; patch_off [N + 1] marks where each row's patches start."""
    n_patch = inp["image_grid_thw"].prod(-1)                                  # [n] patches per image
    pix = torch.cat([p for p in inp["pixel_values"].split(n_patch.tolist()) for _ in range(G)])
    out = {k: inp[k].repeat_interleave(G, 0) for k in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw")}
    out["pixel_values"] = pix
    out["patch_off"] = torch.cat([torch.zeros(1, dtype=torch.long), n_patch.repeat_interleave(G).cumsum(0)])
    return out


def completion_mask(completion: torch.Tensor, eos: int) -> torch.Tensor:
    """[N, C] bool: True up to and including the first EOS, False after it (generate pads finished rows)."""
    is_eos = (completion == eos).long()
    return (is_eos.cumsum(1) - is_eos) == 0


def scoring_inputs(batch: dict, completion, mask, a: int, b: int) -> dict:
    """Model inputs for rows a..b: the left-padded prompt, then the completion. The attention mask covers the
    completion up to its first EOS (so M-RoPE positions, computed from the mask, match sampling); no
    completion token is an image token."""
    b = min(b, len(completion))
    c, off = completion[a:b], batch["patch_off"]
    return {"input_ids": torch.cat([batch["input_ids"][a:b], c], 1),
            "attention_mask": torch.cat([batch["attention_mask"][a:b], mask[a:b].long()], 1),
            "mm_token_type_ids": torch.cat([batch["mm_token_type_ids"][a:b], torch.zeros_like(c, dtype=torch.int)], 1),
            "pixel_values": batch["pixel_values"][off[a]:off[b]], "image_grid_thw": batch["image_grid_thw"][a:b]}


def token_logprobs(model, inputs: dict, C: int, temperature: float, banned: list[int]):
    """(logp [N, C], entropy [N, C] no grad) of the last C tokens (the completion) given everything before them.
    logits / temperature and the suppressed tokens at NEG: the distribution they were sampled from. Positions
    after the first EOS get logp 0 (and are masked everywhere downstream)."""
    comp, mask = inputs["input_ids"][:, -C:], inputs["attention_mask"][:, -C:].bool()
    logits = model(**inputs, use_cache=False, logits_to_keep=C + 1).logits[:, :-1].float() / temperature  # [N, C, V]
    logits = logits.index_fill(-1, torch.tensor(banned, device=logits.device), NEG)
    logp_all = logits.log_softmax(-1)
    logp = logp_all.gather(-1, comp[..., None]).squeeze(-1)                   # [N, C]
    with torch.no_grad():
        ent = -(logp_all.exp() * logp_all).sum(-1)
    return torch.where(mask, logp, 0.0), ent


@torch.no_grad()
def sample(model, batch: dict, gen: GenerationConfig) -> torch.Tensor:
    """KV-cache sampling for every row of the batch in one call → completion ids [N, C], padded after EOS."""
    keys = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")
    out = model.generate(**{k: batch[k] for k in keys}, generation_config=gen)
    return out[:, batch["input_ids"].shape[1]:]


def score_completions(completion, mask, group: list[Sample], tok, vocab, fast, cfg: Config) -> torch.Tensor:
    """[N, 3] (r, r_f, r_a) per completion; row i belongs to prompt group[i // G]."""
    rows, eos = [], tok.convert_tokens_to_ids("<|im_end|>")
    for i, (c, m) in enumerate(zip(completion.tolist(), mask.sum(1).tolist())):
        finished = c[m - 1] == eos                                             # m ≥ 1: the mask ends at the EOS or at C
        ids = c[:m - 1] if finished else c                                     # before the first EOS
        s = group[i // cfg.group]                                              # its prompt's sample
        rows.append(reward(ids, tok.decode(ids, skip_special_tokens=False), finished, s.target if cfg.reward in
                           TARGET_KINDS else s.actions, vocab, fast, cfg.reward, cfg.format_weight, cfg.strict_length))
    return torch.tensor(rows, dtype=torch.float32)


def optimize(cfg: Config, sizes: Sizes, policy, opt, batch: dict, completion, mask, adv, ref=None, banned=(),
             world_size: int = 1):
    """GRPO on this rank's rows of one rollout batch: π_old and π_ref log-probs of the sampled tokens first (no
    grad, not loss-bearing), then μ passes of rollout/update optimizer steps. `policy` is the DDP wrapper under
    torchrun: every loss-bearing forward goes through it. Returns this rank's sums over all steps, by name
    (policy/entropy and policy/kl over its completion tokens, loss/clipped tokens, loss/loss, loss/tokens,
    loss/grad_norm), as 0-d float32 tensors."""
    raw = getattr(policy, "module", policy)
    ddp, (N, C), dev = raw is not policy, completion.shape, completion.device
    amp = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=cfg.bf16 and dev.type == "cuda")
    updates, on_policy = sizes.updates, sizes.on_policy             # on-policy: π_old = detached π_θ, no extra forward
    old_lp, ref_lp = torch.zeros(N, C, device=dev), torch.zeros(N, C, device=dev)
    with torch.no_grad(), torch.autocast(**amp):
        for a in range(0, N, cfg.micro_batch) if not on_policy or ref is not None else []:
            x = scoring_inputs(batch, completion, mask, a, a + cfg.micro_batch)
            if not on_policy:
                old_lp[a:a + cfg.micro_batch] = token_logprobs(raw, x, C, cfg.temperature, banned)[0]
            if ref is not None:
                ref_lp[a:a + cfg.micro_batch] = token_logprobs(ref, x, C, cfg.temperature, banned)[0]
    per_update = N // updates
    per_token = ("policy/entropy", "policy/kl", "loss/clipped", "loss/loss", "loss/tokens")   # summed per micro-step
    acc = {k: torch.zeros((), device=dev) for k in (*per_token, "loss/grad_norm")}
    for _ in range(cfg.mu):
        for u in range(updates):
            lo, hi = u * per_update, (u + 1) * per_update
            n_norm = torch.tensor(float(mask[lo:hi].sum() if cfg.loss_norm == "token" else hi - lo), device=dev)
            if ddp:
                dist.all_reduce(n_norm)                              # the normaliser counts every rank's rows
            n_norm = max(n_norm.item(), 1.0) / world_size            # DDP then averages the gradients over ranks
            starts = list(range(lo, hi, cfg.micro_batch))
            for j, a in enumerate(starts):
                b = min(a + cfg.micro_batch, hi)
                if ddp:                                              # sync gradients on the last micro-step only
                    policy.require_backward_grad_sync = j == len(starts) - 1
                with torch.autocast(**amp):
                    logp, ent = token_logprobs(policy, scoring_inputs(batch, completion, mask, a, b), C, cfg.temperature, banned)
                loss, clipped = grpo_loss(logp, logp.detach() if on_policy else old_lp[a:b], adv[a:b], mask[a:b], n_norm,
                                          cfg.clip_eps, cfg.clip_eps_high or cfg.clip_eps, ref_lp[a:b], cfg.beta, cfg.loss_norm)
                loss.backward()
                m, kl = mask[a:b], k3(ref_lp[a:b], logp.detach()) if ref is not None else torch.zeros_like(logp)
                for k, v in zip(per_token, (ent[m].sum(), kl[m].sum(), clipped.sum().float(), loss.detach(), m.sum().float())):
                    acc[k] += v
            acc["loss/grad_norm"] += torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip or float("inf"))
            opt.step()
            opt.zero_grad(set_to_none=True)
    return acc


def rollout_sums(R, flat, completion, mask, eos: int) -> dict:
    """This rank's rollout figures as sums by name: rewards (R [N, 3]: r, r_f, r_a) and r², completions,
    zero-spread groups (flat [groups]), completion tokens, completions that closed with EOS."""
    r = R[:, 0]
    return {"rollout/reward": r.sum(), "rollout/reward_sq": (r ** 2).sum(), "rollout/r_f": R[:, 1].sum(),
            "rollout/r_a": R[:, 2].sum(), "rollout/completions": len(completion), "rollout/zero_spread": flat.sum(),
            "rollout/groups": len(flat), "rollout/tokens": mask.sum(), "rollout/finished": (completion == eos).any(1).sum()}


def all_reduce_sums(sums: dict, device, ddp: bool) -> dict:
    """{name: number or 0-d tensor} summed over the ranks, in one all-reduce of a float32 vector."""
    t = torch.tensor([float(v) for v in sums.values()], device=device)
    if ddp:
        dist.all_reduce(t)
    return dict(zip(sums, t.tolist()))


def round_line(s: dict, step: int, n_steps: int, with_kl: bool) -> dict:
    """One metrics.jsonl line from the round's summed figures: per-completion means of the reward and its parts,
    per-token means of entropy, KL and the clipped share, per-step means of loss and grad norm (every rank adds
    each optimizer step's loss and norm, so n_steps counts the steps of all ranks)."""
    n, tokens = s["rollout/completions"], max(s["loss/tokens"], 1)
    mean_r = s["rollout/reward"] / n
    return {"round": step + 1, "reward": mean_r, "reward_std": max(s["rollout/reward_sq"] / n - mean_r ** 2, 0) ** 0.5,
            "r_f": s["rollout/r_f"] / n, "r_a": s["rollout/r_a"] / n,
            "zero_spread": s["rollout/zero_spread"] / s["rollout/groups"], "length": s["rollout/tokens"] / n,
            "finished": s["rollout/finished"] / n, "entropy": s["policy/entropy"] / tokens,
            "kl": s["policy/kl"] / tokens if with_kl else None, "clip_frac": s["loss/clipped"] / tokens,
            "loss": s["loss/loss"] / n_steps, "grad_norm": s["loss/grad_norm"] / n_steps}


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(*args, **kwargs):
    """sft.evaluate with the per-prompt values as well ({kind/metric: [mean, lo, hi]}, {kind/metric: values}):
    the same prompts and figures as sft.py, plus what the paired before/after interval needs."""
    return sft_evaluate(*args, per_prompt=True, **kwargs)


def round_prompts(n: int, B: int, k: int, seed: int) -> np.ndarray:
    """Prompt indices of round k: consecutive slices of one fresh permutation per epoch (no prompt repeats
    within an epoch, as the paper's single pass over its RL set)."""
    first, last = k * B // n, (k * B + B - 1) // n
    order = np.concatenate([np.random.default_rng([seed, e]).permutation(n) for e in range(first, last + 1)])
    return order[k * B - first * n:][:B]


# ----------------------------------------------------------------------------- set-up and final evaluation
def read_stage2_of(init: str) -> dict:
    """The --init checkpoint's stage2.json: the demo episodes sft.py reserved for this stage."""
    st_path = os.path.join(init, "stage2.json")
    if not os.path.isfile(st_path):
        raise SystemExit(f"grpo.py: {init} is not an sft.py checkpoint (no stage2.json); run sft.py first")
    stage2 = read_stage2(st_path)
    if not stage2["episodes"]:
        raise SystemExit(f"grpo.py: {st_path} reserves no episodes (sft.py --stage2-frac 0)")
    return stage2


def load_prompts(cfg: Config, stage2: dict, fast):
    """(Stage-2 prompts, held-out prompts, their frames): the reserved episodes' prompts of the kind --reward
    aligns on (reasoning → FAST; choice or trace for Tab. 6's other targets), and --eval-prompts reasoning → FAST
    prompts of the val split chosen as sft.py chooses them, whatever the target (none with --no-eval)."""
    data = cfg.data or stage2.get("data") or stage2.get("demos")     # "demos": checkpoints from before --data
    ds = open_dataset(data, cfg.data_format if cfg.data else stage2.get("data_format", "auto"),
                      stage2.get("drop_noops", False))
    kind = cfg.reward if cfg.reward in TARGET_KINDS else "reason"    # what GRPO aligns on
    prompts = build_samples(ds, stage2["episodes"], fast, {kind: 1.0}, cfg.seed)
    val, val_eps = [], ds.indices("val")
    if cfg.eval:
        if not val_eps:
            raise SystemExit(f"grpo.py: {ds.root} has no val episodes for the held-out evaluation (or pass --no-eval)")
        vk = build_samples(ds, val_eps, fast, {"reason": 1.0}, 1)             # the prompts sft.py evaluates on
        val = [vk[i] for i in np.random.default_rng(0).permutation(len(vk))[: cfg.eval_prompts]]
    return prompts, val, Frames(ds, sorted(set(stage2["episodes"]) | {s.episode for s in val}))


def no_dropout(model) -> None:
    """No dropout anywhere: π_θ, π_old and π_ref must be deterministic functions of the tokens."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if hasattr(m, "attention_dropout"):
            m.attention_dropout = 0.0


def plan(cfg: Config, sizes: Sizes, total: int, ref, prompts: list, stage2: dict, val: list) -> str:
    """The banner's account of the run: one round's completions and optimizer steps, the rounds, how π_old and
    π_ref are obtained, the prompts."""
    return (f"round = {cfg.rollout_batch} prompts × G {cfg.group} = {cfg.rollout_batch * cfg.group} completions "
            f"({sizes.per_rank} prompts per rank) | {sizes.updates} optimizer step(s) of {cfg.update_batch} "
            f"prompts × μ {cfg.mu} per round, micro-batch {cfg.micro_batch} | {total} rounds | "
            f"π_old {'= detached π_θ (on-policy)' if sizes.on_policy else 'recomputed'} | reference "
            f"{'loaded (β %g)' % cfg.beta if ref else 'none (β 0)'} | {len(prompts)} Stage-2 prompts from "
            f"{len(stage2['episodes'])} episodes | {len(val)} held-out")


def start_log(cfg: Config, start: int, log_path: str, before_path: str, raw, proc, vocab, fast, val, frames):
    """(history, before, before_rows) on rank 0: a resumed run keeps its log up to the saved round and the
    held-out figures it measured before training; a fresh one measures them now and starts an empty log."""
    os.makedirs(cfg.out, exist_ok=True)
    history, before, before_rows = [], None, None
    if start and os.path.isfile(log_path):                 # resume: keep the log up to the saved round
        with open(log_path) as f:
            history = [x for x in map(json.loads, filter(str.strip, f)) if x["round"] <= start]
    if cfg.eval and start and os.path.isfile(before_path):
        before, before_rows = read_json(before_path)
    elif cfg.eval and not start:
        before, before_rows = evaluate(raw, proc, vocab, fast, val, frames, cfg.max_new_tokens)
        print("before:", {k: round(v[0], 3) for k, v in before.items()})
    write_jsonl(log_path, history)
    return history, before, before_rows


def final_evaluation(cfg: Config, metrics: dict, before_rows, raw, proc, vocab, fast, val, frames) -> None:
    """Held-out figures after training and with shuffled images; paired over the same prompts, the change
    (after − before: what GRPO did) and the image effect (after − shuffled: what the image decides)."""
    metrics["after"], after_rows = evaluate(raw, proc, vocab, fast, val, frames, cfg.max_new_tokens)
    metrics["after_image_shuffle"], shuffled_rows = evaluate(raw, proc, vocab, fast, val, frames, cfg.max_new_tokens,
                                                             shuffle=True)
    metrics["image_effect"] = paired_change(after_rows, shuffled_rows)
    if before_rows is not None:
        metrics["change"] = paired_change(after_rows, before_rows)
    for k in ("after", "after_image_shuffle", "change", "image_effect"):
        if k in metrics:
            print(f"{k + ':':20s}", {m: [round(x, 3) for x in v] for m, v in metrics[k].items()})


# ----------------------------------------------------------------------------- training
def log_round(cfg: Config, step: int, line: dict, log_path: str, bar, R, completion, mask, mine, tok) -> None:
    """Rank 0, every round: one line of metrics.jsonl, the progress bar, and every --sample-every rounds one
    completion with its rewards (R [N, 3]: r, r_f, r_a)."""
    with open(log_path, "a") as f:
        f.write(json.dumps(line) + "\n")
    bar.set_postfix(r=f"{line['reward']:.3f}", r_a=f"{line['r_a']:.3f}", r_f=f"{line['r_f']:.2f}",
                    flat=f"{line['zero_spread']:.2f}", len=f"{line['length']:.0f}", tok_s=f"{line['tok_s']:.0f}")
    if cfg.sample_every and (step + 1) % cfg.sample_every == 0:
        c = completion[0, :int(mask[0].sum())].tolist()
        bar.write(f"round {step + 1} sample (r {R[0, 0]:.2f}, r_f {R[0, 1]:.0f}, r_a {R[0, 2]:.2f}; target "
                  f"{len(mine[0].actions)} action tokens): {mine[0].prompt!r}\n  → {tok.decode(c)}")


def build_policy(cfg: Config, model, device, ddp: bool):
    """(wrapped, ref, opt, start): π_θ on the device without dropout, the frozen reference π_ref = --init (only when
    β > 0), AdamW, and the round to start from (--resume). Every loss-bearing forward goes through `wrapped` (DDP
    under torchrun; every parameter is used)."""
    no_dropout(model)
    model.to(device)
    ref = copy.deepcopy(model).eval().requires_grad_(False) if cfg.beta > 0 else None   # frozen π_ref = --init
    if cfg.grad_ckpt:
        model.gradient_checkpointing_enable()
    opt = configure_optimizers([{"params": list(model.named_parameters())}], cfg.weight_decay, lr=cfg.lr)
    start = load_resume(model, opt, cfg.out) if cfg.resume else 0
    wrapped = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if ddp else model
    return wrapped, ref, opt, start


def save_run(cfg: Config, metrics: dict, history: list, log_path: str, stage2: dict, raw, proc, fast, vocab) -> None:
    """The GRPO checkpoint (sft.py's layout plus metrics.json, grpo_config.json, the Stage-2 split it trained on)
    and the round log."""
    save_checkpoint(raw, proc, fast, vocab, cfg.out, {"metrics.json": metrics, "grpo_config.json": asdict(cfg),
                                                      "stage2.json": stage2})
    write_jsonl(log_path, history)                   # save_checkpoint replaced the directory


@exits_on_bad_files("grpo.py")
def main(cfg: Config) -> dict:
    ddp, rank, world_size, device = setup_distributed(cfg.seed)
    master = rank == 0
    check(cfg, world_size)
    sizes = Sizes.of(cfg, world_size)
    stage2 = read_stage2_of(cfg.init)
    model, proc, fast, vocab = load_backbone(cfg.init, cfg.trust_remote_code)
    tok = proc.tokenizer
    tok.padding_side = "left"                                  # generation appends on the right
    t0 = time.time()
    prompts, val, frames = load_prompts(cfg, stage2, fast)
    wrapped, ref, opt, start = build_policy(cfg, model, device, ddp)
    raw = model                                                     # unwrapped handle: sampling, no-grad scoring, saving
    G, banned, eos = cfg.group, suppressed_ids(tok, model), tok.convert_tokens_to_ids("<|im_end|>")
    total = cfg.steps or -(-len(prompts) // cfg.rollout_batch)     # rounds: one pass over the prompts by default
    gen = GenerationConfig(do_sample=True, temperature=cfg.temperature, top_k=0, top_p=cfg.top_p,
                           max_new_tokens=cfg.max_new_tokens, suppress_tokens=banned,
                           eos_token_id=eos, pad_token_id=tok.pad_token_id)
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda")
    if master:
        dtype = "bf16 autocast (GPU)" if autocast["enabled"] else "fp32 (CPU: bf16 autocast is slow and lossy here)"
        print(f"grpo.py | device {device} × {world_size} | {dtype} | {sum(p.numel() for p in raw.parameters()) / 1e6:.2f} M "
              f"parameters, all trained | {plan(cfg, sizes, total, ref, prompts, stage2, val)} | data {time.time() - t0:.1f}s")

    metrics, history, before_rows = {"before": None}, [], None
    log_path, before_path = os.path.join(cfg.out, "metrics.jsonl"), os.path.join(cfg.out, "resume", "before.json")
    if master:
        history, metrics["before"], before_rows = start_log(cfg, start, log_path, before_path, raw, proc, vocab, fast,
                                                            val, frames)
    if ddp:
        dist.barrier()                                        # the other ranks wait for rank 0's evaluation

    bar = tqdm(range(start, total), disable=not master, desc="grpo", dynamic_ncols=True)
    t_train = time.time()
    for step in bar:
        t_round, cpu_round = time.time(), time.process_time()
        # 1. rollouts: this rank's share of the round's prompts, G completions each (the rank owns those groups)
        mine = [prompts[i] for i in round_prompts(len(prompts), cfg.rollout_batch, step, cfg.seed)[rank::world_size]]
        inp = collate(mine, [frames(s) for s in mine], proc, vocab, with_answer=False)
        inp.pop("labels")
        batch = {k: v.to(device) for k, v in repeat_group(inp, G).items()}    # N = len(mine)·G rows, prompt len P
        raw.eval()
        with torch.autocast(**autocast):
            completion = sample(raw, batch, gen)                                # [N, C]
        raw.train()
        t_sample = time.time() - t_round
        mask = completion_mask(completion, eos)                               # [N, C]

        # 2. rewards and group-normalised advantages, computed where the group lives
        R = score_completions(completion.cpu(), mask.cpu(), mine, tok, vocab, fast, cfg)      # [N, 3]
        adv, flat = group_advantages(R[:, 0].view(-1, G), cfg.scale_std)
        adv = adv.reshape(-1).to(device)                                       # [N]

        # 3. π_old / π_ref log-probs, then μ passes of clipped policy-gradient steps (through the DDP wrapper)
        acc = optimize(cfg, sizes, wrapped, opt, batch, completion, mask, adv, ref, banned, world_size)

        # 4. metrics: this rank's sums by name, summed over ranks in one all-reduce: every figure is the round's
        s = all_reduce_sums({**rollout_sums(R, flat, completion, mask, eos), **acc}, device, ddp)
        line = round_line(s, step, n_steps=sizes.steps_per_round, with_kl=ref is not None)
        line.update({"tok_s": s["rollout/tokens"] / (time.time() - t_round), "s_sample": t_sample,
                     "s_round": time.time() - t_round, "cpu_s_round": time.process_time() - cpu_round})   # CPU s: robust on a shared machine
        if master:
            history.append(line)
            log_round(cfg, step, line, log_path, bar, R, completion, mask, mine, tok)
        if master and cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total:
            save_resume(raw, opt, step + 1, cfg.out)
            if before_rows is not None:
                with open(before_path, "w") as f:
                    json.dump([metrics["before"], before_rows], f)
    train_time = time.time() - t_train
    end_distributed(ddp)                                      # no collective after this point

    if master:
        metrics.update({"rounds": total, "seconds": round(train_time, 1), "s_per_round": train_time / max(1, total - start),
                        "config": asdict(cfg), "last": history[-1] if history else None})
        if cfg.eval:
            final_evaluation(cfg, metrics, before_rows, raw, proc, vocab, fast, val, frames)
        save_run(cfg, metrics, history, log_path, stage2, raw, proc, fast, vocab)
        print(f"wrote {cfg.out} ({train_time:.0f}s of GRPO, {train_time / max(1, total - start):.2f} s/round)")
    return metrics


if __name__ == "__main__":
    main(parse_config())
