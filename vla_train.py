"""The VLA: a frozen backbone from any stage + a fresh DDPM action head, trained on demonstrations.

Reads `--backbone DIR` (the pretrained tiny backbone, the SFT output or the GRPO output: the paper's ablation
varies exactly this) and `--data` (any format data.demos.open_dataset reads; the backbone's processor resizes
frames of any size); writes `--out DIR`: `head.safetensors`, `vla_config.json` (head config, backbone path, layer,
prompt mode, normalisation statistics) and `metrics.json`. `eval_libero.py --policy DIR` loads it through
`Policy.load`.

    python vla_train.py --backbone out/sft                       # a few CPU minutes (README: figures and times)
    python vla_train.py --backbone out/sft --finetune-backbone   # backbone trained too (slow: ~0.5 s a step)
    python vla_train.py --backbone out/grpo --out out/vla_grpo
    python vla_train.py --backbone out/sft --prompt reasoning    # the reasoning prompt instead of the instruction
    python vla_train.py --features oracle --out out/vla_oracle   # the ceiling: the same head on privileged state
    python vla_train.py --backbone out/sft --features blind      # the backbone reads the instruction, a blank image
    torchrun --nproc_per_node 2 vla_train.py --backbone out/sft --steps 50

What the head sees. The backbone reads the upright agentview frame (+ the wrist frame with --wrist) and a
prompt — by default the instruction alone; with --prompt reasoning, the reasoning prompt RoboAlign trains
with — in one forward pass: no text is generated at control time. The head reads the hidden states of every
prompt token (image tokens included) at layer `--layer` (default: the paper's relative depth, 18 of 28 →
round(0.64·L); HF's hidden_states[k] is the output of decoder block k, [0] the embeddings) or, with --pooled,
the last token only (CogACT's one "cognition" token). Inputs: 8-D proprio (z-scored with the demos' mean/std);
outputs: an H-step chunk of 7-D actions, quantile-normalised (q01..q99 → −1..1) and clipped to [−1, 1].

The head (diffusion_head.py) is a DDPM head, and two choices in it decide whether the VLA closes the loop on CPU
budgets, both measured closed-loop on mini-LIBERO's libero layouts (10 trials per task, 4 suites): it predicts
x0 (`--prediction sample`) rather than ε, and its denoiser is a residual MLP on an attention-pooled condition
(`--arch mlp`) rather than cross-attention transformer blocks. With privileged state as the condition, the old
setting (ε, 2-block transformer, batch 64) closed the loop 2-13 % of the time; x0 with the transformer 72 %; x0
with the MLP denoiser 85 % in half the training time — the transformer attends over every condition token in
every block, which on 2 cores leaves few samples per second. `--arch transformer --prediction epsilon` is the
classic Diffusion-Policy-style head and stays a flag away.

The calibration ladder (--features). `backbone` is the VLA. `blind` feeds the backbone a blank frame, so the head
knows the task and its proprio but never looks: how far the VLA gets above it is what the image is worth.
`oracle` replaces the backbone by privileged state (mini-LIBERO's sim_state: the hand, every body's pose and its
offset from the hand, drawer/knob joints, the task), one vector as the condition; it is what perfect perception
allows with these demos and this head. eval_libero.py's `--policy replay` (a same-task demo replayed open-loop)
is the floor below them.

Feature caching. With the backbone frozen (the paper's setting) and in eval mode, its hidden states for a
frame and prompt are a deterministic function of them: no dropout, no augmentation, weights never change.
So they are computed once before training and the head trains on the cache — exactly the same gradients as
recomputing them every step, at a fraction of the cost.

--finetune-backbone (not the paper's setting) trains the backbone jointly: no cache; every step encodes its
frames inside the wrapped VLA module (so DDP all-reduces the backbone's gradients too), with its own
--backbone-lr; the blocks above --layer stay frozen (they cannot change the features). The checkpoint then also
holds DIR/backbone, saved as sft.py saves one, and `Policy.load` reads the fine-tuned weights from there.

Full-size recipe (paper: Qwen2.5-VL-7B backbone frozen, layer 18, a GR00T-N1.5-style head, 60 K steps,
batch 32, 2× A100; GR00T's head is flow matching, this one is DDPM, the paper saying "diffusion-based"):
    torchrun --nproc_per_node 2 vla_train.py --backbone out/grpo --data path/to/libero --steps 60000 \\
        --batch 32 --layer 18 --wrist --frame-stride 1 --n-layers 4 --lr 1e-3
(The CPU defaults — every 4th frame, a 3-block MLP denoiser of width 256, batch 256, lr 1e-3, 2000 steps — are
sized for a few minutes on one core; README.)
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

import config
from config import arg, exits_on_bad_files, write_json
from data.demos import DemoDataset, chunk_episode, open_dataset
from data.prompts import reasoning_prompt
from diffusion_head import DiffusionHead, HeadConfig
from model import (configure_optimizers, end_distributed, load_backbone, load_resume, lr_at, save_checkpoint,
                   save_resume, setup_distributed, swap_into)


@dataclass
class Config:
    backbone: str = arg("out/sft", "backbone checkpoint dir: assets/tiny-vl, out/sft, out/grpo, or a Qwen2.5-VL dir")
    data: str = arg("out/demos", "dataset: mini-LIBERO demos, LIBERO HDF5 files or a LeRobot dataset (README: datasets)")
    data_format: str = arg("auto", "format of --data: auto | mini | libero_hdf5 | lerobot")
    drop_noops: bool = arg(False, "drop no-op steps from the demos (OpenVLA's filter)")
    out: str = arg("out/vla", "output directory (head + config + metrics)")
    horizon: int = arg(10, "action chunk length H")
    layer: int = arg(-1, "backbone hidden-state index (-1: round(18/28 · decoder layers), the paper's depth)")
    features: str = arg("backbone", "what the head is conditioned on: backbone | blind (blank image) | oracle (privileged state)")
    prompt: str = arg("instruction", "what the backbone reads besides the image: instruction | reasoning")
    wrist: bool = arg(False, "also feed the wrist-camera frame to the backbone")
    pooled: bool = arg(False, "condition on the last prompt token only (CogACT-style) instead of all tokens")
    finetune_backbone: bool = arg(False, "train the backbone jointly with the head (no feature cache; the paper freezes it)")
    backbone_lr: float = arg(1e-4, "peak learning rate of the backbone with --finetune-backbone")
    frame_stride: int = arg(4, "use every k-th frame of each demo (consecutive frames are near-duplicates)")
    steps: int = arg(2000, "optimizer steps")
    batch: int = arg(256, "global batch (over ranks)")
    lr: float = arg(1e-3, "AdamW learning rate, cosine-decayed after a warm-up over 3 % of the steps")
    arch: str = arg("mlp", "head denoiser: mlp (pooled condition, residual MLP) | transformer (cross-attention blocks)")
    d_model: int = arg(256, "head width")
    cond_dropout: float = arg(0.0, "dropout on the head's pooled condition while training (--arch mlp)")
    cond_noise: float = arg(0.0, "Gaussian noise (std) on the head's normalised condition tokens while training")
    image_dropout: float = arg(0.0, "share of training frames whose features come from a blank image instead (frozen backbone)")
    n_layers: int = arg(3, "head blocks (residual MLP or transformer)")
    prediction: str = arg("sample", "what the DDPM head predicts: sample (x0) | epsilon | v_prediction (diffusion_head.py)")
    ddim_steps: int = arg(10, "DDIM steps at inference (100 training steps, squaredcos_cap_v2 schedule)")
    val_every: int = arg(500, "validation every N steps (0: only at the end)")
    save_every: int = arg(200, "write --out/resume every N steps, for --resume (0: never)")
    resume: bool = arg(False, "continue from --out/resume if present")
    seed: int = arg(0, "random seed (rank is added)")


def parse_config(argv=None) -> Config:
    return config.parse_config(Config, argv, __doc__)


# ----------------------------------------------------------------------------- normalisation
def norm_stats(stats: dict) -> dict:
    """Quantile range for actions (a zero-width dim, e.g. the expert's level wrist, keeps half-range 1) and
    mean/std for proprio, as plain lists (they travel in vla_config.json)."""
    q01, q99 = np.array(stats["actions"]["q01"]), np.array(stats["actions"]["q99"])
    half = np.where(q99 - q01 > 1e-6, (q99 - q01) / 2, 1.0)
    std = np.array(stats["state"]["std"])
    return {"a_mid": ((q01 + q99) / 2).tolist(), "a_half": half.tolist(),
            "s_mean": stats["state"]["mean"], "s_std": np.where(std > 1e-6, std, 1.0).tolist()}


def normalize_actions(a, ns):
    return np.clip((a - np.array(ns["a_mid"])) / np.array(ns["a_half"]), -1, 1).astype(np.float32)


def unnormalize_actions(a, ns):
    return a * np.array(ns["a_half"]) + np.array(ns["a_mid"])


def normalize_state(s, ns):
    return ((s - np.array(ns["s_mean"])) / np.array(ns["s_std"])).astype(np.float32)


# ----------------------------------------------------------------------------- backbone features
def vla_prompt(instruction: str, mode: str) -> str:
    if mode not in ("instruction", "reasoning"):
        raise SystemExit(f"vla_train.py: --prompt {mode!r}: expected instruction or reasoning")
    return reasoning_prompt(instruction) if mode == "reasoning" else instruction


def prepare(proc, images, wrists, texts, device) -> dict:
    """The backbone's inputs for a batch of frames (+ wrist frames) and prompts; prompts left-padded."""
    content = [{"type": "image"}] + ([{"type": "image"}] if wrists is not None else [])
    msgs = [[{"role": "user", "content": content + [{"type": "text", "text": t}]}] for t in texts]
    text = [proc.tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in msgs]
    imgs = [im for i in range(len(texts)) for im in ([images[i]] + ([wrists[i]] if wrists is not None else []))]
    x = proc(text=text, images=imgs, return_tensors="pt", padding=True)
    return {k: v.to(device) for k, v in x.items()}


def features(model, x: dict, layer: int):
    """(hidden states at `layer` [B, L, C], mask [B, L] bool); the mask marks real tokens (image tokens included:
    the head may attend to them directly). `model.model` is the decoder without the LM head: no logits."""
    return model.model(**x, output_hidden_states=True).hidden_states[layer], x["attention_mask"].bool()


@torch.no_grad()
def encode(model, proc, images, wrists, texts, layer: int, device):
    """features() of the frozen backbone without the decoder blocks above `layer`: in a causal stack they cannot
    change hidden_states[layer], so they are skipped (a quarter of the decoder at the default layer 3 of 4). With
    the final norm set aside too, the truncated stack's last hidden state is the full stack's hidden_states[layer]."""
    x = prepare(proc, images, wrists, texts, device)
    lm = model.model.language_model
    blocks, norm = lm.layers, lm.norm
    if layer < len(blocks):                  # (at the top block, hidden_states[L] is the normed last state anyway)
        lm.layers, lm.norm = blocks[:layer], nn.Identity()
    try:           # last_hidden_state, not output_hidden_states: HF hooks the blocks present at the first such call
        return model.model(**x).last_hidden_state, x["attention_mask"].bool()
    finally:
        lm.layers, lm.norm = blocks, norm


def default_layer(model) -> int:
    return max(1, round(18 / 28 * model.config.text_config.num_hidden_layers))


def left_pad(feats: list, masks: list):
    """Stack [B_i, L_i, C] features and [B_i, L_i] masks into [ΣB, max L, C] / [ΣB, max L], padding on the left
    (the prompts are left-padded already; the head ignores masked tokens)."""
    L = max(f.shape[1] for f in feats)
    pad = lambda t, v: torch.cat([torch.full((t.shape[0], L - t.shape[1], *t.shape[2:]), v, dtype=t.dtype), t], 1)
    return torch.cat([pad(f, 0) for f in feats]), torch.cat([pad(m, False) for m in masks])


def blank_frame(size: int) -> np.ndarray:
    """What --features blind shows the backbone instead of the camera: a mid-grey frame, the same for every step."""
    return np.full((size, size, 3), 128, dtype=np.uint8)


def blank_image_features(model, proc, texts: list, cfg, layer: int, device, image_size: int):
    """--image-dropout's stand-ins: each distinct prompt's features on a blank image, encoded once.
    → (cond [P, L', C], mask [P, L'], row → prompt index [N])."""
    prompts = list(dict.fromkeys(texts))
    cond, mask = cache_features(model, proc, {"text": prompts}, replace(cfg, features="blind"), layer, device,
                                image_size=image_size, desc="blank-image features")
    pos = {t: i for i, t in enumerate(prompts)}
    return cond, mask, torch.tensor([pos[t] for t in texts])


def drop_images(cond, mask, blind_cond, blind_mask, drop):
    """--image-dropout: rows where `drop` [B] is True take the blank-image features of their prompt instead.
    cond [B, L, C] / mask [B, L] and blind_cond [B, L', C] / blind_mask [B, L'] are left-padded, so after padding
    both to max(L, L') on the left the same prompt token sits at the same position."""
    c, m = left_pad([cond, blind_cond], [mask, blind_mask])
    B, d = len(cond), drop[:, None]
    return torch.where(d[..., None], c[B:], c[:B]), torch.where(d, m[B:], m[:B])


# ----------------------------------------------------------------------------- privileged state (--features oracle)
ORACLE_BODIES = 16          # bodies a scene may have (mini-LIBERO's have at most 11)


def oracle_dim(n_tasks: int) -> int:
    return n_tasks + 5 + 10 * ORACLE_BODIES


def oracle_vector(sim_state: np.ndarray, task: int, n_tasks: int) -> np.ndarray:
    """mini-LIBERO's flat world state (data.world.World.get_state) → one vector [oracle_dim] float32: the task
    one-hot; the hand (eef xyz, finger opening, holding something); then per body slot (its index in the task's
    scene, which is how the target bowl differs from the other one) xyz, xyz − eef, sin/cos yaw, joint (drawer
    opening, knob angle), held. Positions in units of 10 cm, so a 1.5 cm shift is 0.15; empty slots are 0."""
    s = np.asarray(sim_state, dtype=np.float64)
    eef, width, held = s[0:3], s[7], int(s[8])
    per = s[10:].reshape(-1, 6)                                         # per body: pos (3), yaw, support, joint
    if len(per) > ORACLE_BODIES:
        raise ValueError(f"a scene of {len(per)} bodies: oracle features hold at most {ORACLE_BODIES}")
    bodies = np.zeros((ORACLE_BODIES, 10))
    bodies[: len(per)] = np.column_stack([10 * per[:, :3], 10 * (per[:, :3] - eef), np.sin(per[:, 3]),
                                          np.cos(per[:, 3]), per[:, 5], np.arange(len(per)) == held])
    onehot = np.zeros(n_tasks)
    onehot[task] = 1.0
    return np.concatenate([onehot, 10 * eef, [width / 0.08, held >= 0], bodies.ravel()]).astype(np.float32)


def oracle_features(sims: list, tasks: list, n_tasks: int):
    """Oracle condition of a batch as one token: cond [B, 1, oracle_dim], mask [B, 1]."""
    cond = torch.from_numpy(np.stack([oracle_vector(s, t, n_tasks) for s, t in zip(sims, tasks)]))[:, None]
    return cond, torch.ones(len(sims), 1, dtype=torch.bool)


def unfreeze_below(model, layer: int) -> None:
    """--finetune-backbone trains what the features at `layer` depend on: vision tower (+ adapter), embeddings,
    decoder blocks 0..layer-1. Blocks above, the final norm (unless layer = L: HF's last hidden state is normed)
    and an untied LM head cannot change them and stay frozen: DDP expects a gradient for every trainable one."""
    model.requires_grad_(False)
    model.model.requires_grad_(True)
    lm = model.model.language_model
    lm.layers[layer:].requires_grad_(False)
    if layer < len(lm.layers):
        lm.norm.requires_grad_(False)


class VLA(nn.Module):
    """What DDP wraps: the head, and with --finetune-backbone the backbone too, so that the features are computed
    inside the wrapped forward and DDP all-reduces the backbone's gradients with the head's. forward = the loss."""

    def __init__(self, head, backbone=None, layer: int = -1):
        super().__init__()
        self.head, self.backbone, self.layer = head, backbone, layer

    def forward(self, actions, proprio, cond=None, cond_mask=None, inputs=None, generator=None):
        if self.backbone is not None:                                  # fresh features, with gradient
            cond, cond_mask = features(self.backbone, inputs, self.layer)
        return self.head.loss(actions, proprio, cond.float(), cond_mask, generator=generator)


# ----------------------------------------------------------------------------- data
def task_list(ds: DemoDataset) -> list:
    """The dataset's instructions in order of first appearance: --features oracle's task one-hot indexes it."""
    return list(dict.fromkeys(e["language"] for e in ds.episodes))


def build_data(ds: DemoDataset, split: str, cfg: Config, ns: dict):
    """Per used frame: image (+ wrist), prompt, normalised proprio and normalised action chunk; for --features
    oracle the privileged world state and the task index instead of the images."""
    rows = {"img": [], "wrist": [], "text": [], "proprio": [], "chunk": [], "sim": [], "task": []}
    oracle = cfg.features == "oracle"
    if oracle and not ds.privileged:
        raise SystemExit(f"vla_train.py: --features oracle reads privileged world state, which only mini-LIBERO demos "
                         f"hold; {cfg.data} is {ds.meta['format']}")
    keys = ["state", "actions"] + (["sim_state"] if oracle else ["agentview_rgb"]) + \
        (["eye_in_hand_rgb"] if cfg.wrist and cfg.features == "backbone" else [])
    tasks = {t: i for i, t in enumerate(task_list(ds))}
    for e in ds.indices(split):
        ep = ds.load(e, keys)
        chunks = chunk_episode(ep["actions"], cfg.horizon)
        for t in range(0, len(chunks), cfg.frame_stride):
            rows["img"].append(ep["agentview_rgb"][t] if cfg.features == "backbone" else None)
            rows["wrist"].append(ep["eye_in_hand_rgb"][t] if cfg.wrist and cfg.features == "backbone" else None)
            rows["sim"].append(ep["sim_state"][t] if oracle else None)
            rows["task"].append(tasks[ds.episodes[e]["language"]])
            rows["text"].append(vla_prompt(ds.episodes[e]["language"], cfg.prompt))
            rows["proprio"].append(normalize_state(ep["state"][t], ns))
            rows["chunk"].append(normalize_actions(chunks[t], ns))
    rows["proprio"], rows["chunk"] = torch.tensor(np.stack(rows["proprio"])), torch.tensor(np.stack(rows["chunk"]))
    return rows


@torch.no_grad()
def cache_features(model, proc, rows, cfg: Config, layer, device, n_tasks=0, image_size=0, batch=64, desc="features"):
    """The head's condition for every frame, left-padded to one length: cond [N, L, C] float32, mask [N, L].
    (float32, not float16: training on the cache must equal training on fresh features, bit for bit.)
    blind: the features depend on the prompt alone, so each distinct prompt is encoded once."""
    if cfg.features == "oracle":
        return oracle_features(rows["sim"], rows["task"], n_tasks)
    if cfg.features == "blind":
        texts = list(dict.fromkeys(rows["text"]))
        cond, mask = cache_features(model, proc, {"img": [blank_frame(image_size)] * len(texts), "text": texts},
                                    Config(features="backbone"), layer, device, batch=batch, desc=desc)
        pos = {t: i for i, t in enumerate(texts)}
        idx = torch.tensor([pos[t] for t in rows["text"]])
        return cond[idx], mask[idx]
    feats, masks = [], []
    for i in tqdm(range(0, len(rows["text"]), batch), desc=desc, leave=False):
        sl = slice(i, i + batch)
        h, m = encode(model, proc, rows["img"][sl], rows["wrist"][sl] if cfg.wrist else None, rows["text"][sl], layer, device)
        feats.append(h.float().cpu())
        masks.append(m.cpu())
    return left_pad(feats, masks)


@torch.no_grad()
def validate(head, cond, mask, proprio, chunk, ddim_steps, baseline, batch=256) -> dict:
    """L1 (normalised units) of DDIM samples vs the demos' chunks, of the mean-chunk baseline, and the
    denoising loss on the held-out frames."""
    head.eval()
    l1, loss = [], []
    g, gl = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    for i in range(0, len(chunk), batch):
        sl = slice(i, i + batch)
        pred = head.sample(proprio[sl], cond[sl].float(), mask[sl], steps=ddim_steps, generator=g)
        l1.append((pred - chunk[sl]).abs().mean(dim=(1, 2)))
        loss.append(head.loss(chunk[sl], proprio[sl], cond[sl].float(), mask[sl], generator=gl).item())
    head.train()
    return {"val_l1": float(torch.cat(l1).mean()), "mean_action_l1": float((baseline - chunk).abs().mean()),
            "val_loss": float(np.mean(loss))}


# ----------------------------------------------------------------------------- the policy used by eval_libero.py
class Policy:
    """Observation → action chunk in env units: the condition (backbone forward, or privileged state) + K-step
    DDIM + un-normalisation. An oracle policy reads each episode's env (eval_libero.py hands it over through
    `start`, as to its other privileged references); a blind one never needs a rendered frame."""

    def __init__(self, model, proc, head, vcfg: dict, device="cpu"):
        self.model = model.eval() if model is not None else None     # None: an oracle reads no backbone
        self.proc, self.head, self.vcfg, self.device = proc, head.eval(), vcfg, device
        self.features = vcfg.get("features", "backbone")
        self.image_size = vcfg["image_size"]
        self.uses_images = self.features == "backbone"  # eval_libero.py renders only what a policy reads
        self.uses_wrist = vcfg["wrist"] and self.uses_images
        self.episodic = self.features == "oracle"       # → start(slot, episode, env), and slots= in each call
        self.horizon = vcfg["head"]["horizon"]
        self.layout = vcfg.get("layout")
        self.envs, self._blind = {}, {}

    @classmethod
    def load(cls, path: str, device: str = "cpu") -> "Policy":
        cfg_path = os.path.join(path, "vla_config.json")
        if not os.path.isfile(cfg_path):
            raise SystemExit(f"vla_train.py: {path} is not a VLA checkpoint (expected vla_config.json)")
        with open(cfg_path) as f:
            vcfg = json.load(f)
        model = proc = None
        if vcfg.get("features", "backbone") != "oracle":
            backbone = vcfg["backbone"] if os.path.isabs(vcfg["backbone"]) else os.path.join(path, vcfg["backbone"])
            model, proc, _, _ = load_backbone(backbone, need_actions=False)
            model = model.to(device).eval()
        head = DiffusionHead(HeadConfig(**vcfg["head"]))
        head.load_state_dict(load_file(os.path.join(path, "head.safetensors")))
        return cls(model, proc, head.to(device), vcfg, device)

    def start(self, slot, episode, env) -> None:
        self.envs[slot] = env

    def condition(self, images, wrist_images, instructions, slots):
        c = self.vcfg
        if self.features == "oracle":
            tasks = [c["tasks"].index(t) if t in c["tasks"] else -1 for t in instructions]
            if -1 in tasks:
                raise ValueError(f"oracle policy: instruction {instructions[tasks.index(-1)]!r} is not one of its "
                                 f"{len(c['tasks'])} training tasks")
            return oracle_features([self.envs[s].get_sim_state() for s in slots], tasks, len(c["tasks"]))
        texts = [vla_prompt(t, c["prompt"]) for t in instructions]
        if self.features == "blind":                   # the features depend on the prompt alone: encode each once
            for t in set(texts) - set(self._blind):
                self._blind[t] = encode(self.model, self.proc, [blank_frame(self.image_size)], None, [t], c["layer"],
                                        self.device)
            return left_pad([self._blind[t][0] for t in texts], [self._blind[t][1] for t in texts])
        return encode(self.model, self.proc, list(images), list(wrist_images) if c["wrist"] else None, texts,
                      c["layer"], self.device)

    @torch.no_grad()
    def __call__(self, images, wrist_images, proprio, instructions, slots=None, generator=None) -> np.ndarray:
        c = self.vcfg
        cond, mask = self.condition(images, wrist_images, instructions, slots)
        p = torch.tensor(normalize_state(np.asarray(proprio), c["norm"]), device=self.device)
        a = self.head.sample(p, cond.float().to(self.device), mask.to(self.device), steps=c["ddim_steps"],
                             generator=generator).cpu().numpy()
        a = unnormalize_actions(a, c["norm"])
        a[..., 6] = np.where(a[..., 6] >= 0, 1.0, -1.0)               # the gripper is binary in LIBERO
        return a.astype(np.float32)


# ----------------------------------------------------------------------------- training
def check_flags(cfg: Config, world: int) -> None:
    if cfg.features not in ("backbone", "blind", "oracle"):
        raise SystemExit(f"vla_train.py: --features {cfg.features!r}: expected backbone, blind or oracle")
    if cfg.image_dropout and (cfg.features != "backbone" or cfg.finetune_backbone):
        raise SystemExit("vla_train.py: --image-dropout swaps cached image features for blank-image ones: it needs "
                         "--features backbone and a frozen backbone")
    if cfg.finetune_backbone and cfg.features != "backbone":
        raise SystemExit("vla_train.py: --finetune-backbone trains the backbone the head reads: use --features backbone")
    if cfg.batch % world:
        raise SystemExit(f"vla_train.py: --batch {cfg.batch} must be a multiple of the {world} ranks")


def load_encoder(cfg: Config, n_tasks: int, device):
    """(model, proc, fast, vocab, layer, cond_dim): the backbone the head reads layer `layer` of, frozen unless
    --finetune-backbone (then trained below that layer); with --features oracle no backbone at all (None, ..., -1)
    and the head reads privileged state."""
    if cfg.features == "oracle":
        return None, None, None, None, -1, oracle_dim(n_tasks)
    model, proc, fast, vocab = load_backbone(cfg.backbone, need_actions=False)
    model.to(device).eval()          # eval mode in both paths: Qwen2.5-VL has no dropout to switch on anyway
    proc.tokenizer.padding_side = "left"
    layer = cfg.layer if cfg.layer >= 0 else default_layer(model)
    if not 0 <= layer <= model.config.text_config.num_hidden_layers:
        raise SystemExit(f"vla_train.py: --layer {layer} outside 0..{model.config.text_config.num_hidden_layers}")
    model.requires_grad_(False)                                  # frozen: the paper's setting
    if cfg.finetune_backbone:
        unfreeze_below(model, layer)
    return model, proc, fast, vocab, layer, model.config.text_config.hidden_size


def build_head(cfg: Config, cond_dim: int, model, layer: int, device):
    """(head, its HeadConfig, the VLA module every loss goes through, AdamW): the head's group at --lr, the
    fine-tuned backbone's (if any) at --backbone-lr."""
    hcfg = HeadConfig(action_dim=7, horizon=cfg.horizon, proprio_dim=8, cond_dim=cond_dim, d_model=cfg.d_model,
                      n_layers=cfg.n_layers, pooled=cfg.pooled, prediction=cfg.prediction, arch=cfg.arch,
                      cond_dropout=cfg.cond_dropout, cond_noise=cfg.cond_noise)
    torch.manual_seed(cfg.seed)                                      # the same fresh head on every rank
    head = DiffusionHead(hcfg).to(device)
    vla = VLA(head, model if cfg.finetune_backbone else None, layer)
    groups = [{"params": list(head.named_parameters()), "lr": cfg.lr, "base_lr": cfg.lr}]
    if cfg.finetune_backbone:
        groups.append({"params": list(model.named_parameters()), "lr": cfg.backbone_lr, "base_lr": cfg.backbone_lr})
    return head, hcfg, vla, configure_optimizers(groups, weight_decay=1e-4)


@exits_on_bad_files("vla_train.py")
def main(cfg: Config) -> dict:
    ddp, rank, world, device = setup_distributed(cfg.seed)
    master = rank == 0
    t0 = time.time()
    ds = open_dataset(cfg.data, cfg.data_format, cfg.drop_noops)
    ns = norm_stats(ds.stats)
    check_flags(cfg, world)
    n_tasks, image_size = len(task_list(ds)), int(ds.meta["image_size"])
    model, proc, fast, vocab, layer, cond_dim = load_encoder(cfg, n_tasks, device)
    train, val = build_data(ds, "train", cfg, ns), build_data(ds, "val", cfg, ns)
    if master:
        what = "privileged state (oracle)" if cfg.features == "oracle" else \
            f"backbone {cfg.backbone} layer {layer} ({'fine-tuned' if cfg.finetune_backbone else 'frozen'})" + \
            (" on a blank image (blind)" if cfg.features == "blind" else "")
        print(f"vla_train.py | {len(train['text'])} train / {len(val['text'])} val frames | layout "
              f"{ds.meta.get('layout', 'unknown')} | {what} | prompt: {cfg.prompt}{' + wrist' if cfg.wrist else ''}")
    mine = np.arange(rank, len(train["text"]), world)                # this rank's shard of the training frames
    sub = {k: [v[i] for i in mine] if isinstance(v, list) else v[mine] for k, v in train.items()}
    t_data = time.time() - t0
    # frozen: each rank caches its shard's features once (the backbone forward is the expensive part), rank 0
    # also the val features; fine-tuned: nothing to cache, features come from the training forward itself
    cond = mask = vfeat = None
    if not cfg.finetune_backbone:
        cond, mask = cache_features(model, proc, sub, cfg, layer, device, n_tasks, image_size, desc="train features")
        vfeat = cache_features(model, proc, val, cfg, layer, device, n_tasks, image_size, desc="val features") \
            if master else None
    blind = blank_image_features(model, proc, sub["text"], cfg, layer, device, image_size) if cfg.image_dropout else None
    t_feat = time.time() - t0 - t_data

    head, hcfg, vla, opt = build_head(cfg, cond_dim, model, layer, device)
    params = [p for g in opt.param_groups for p in g["params"]]
    start = load_resume(vla, opt, cfg.out) if cfg.resume else 0      # head (+ backbone) weights, AdamW state, step
    wrapped = nn.parallel.DistributedDataParallel(vla) if ddp else vla
    if master:
        n_bb = sum(p.numel() for p in model.parameters() if p.requires_grad) if cfg.finetune_backbone else 0
        print(f"device {device} × {world} | fp32 | head {sum(p.numel() for p in head.parameters()) / 1e6:.2f} M "
              f"+ backbone {n_bb / 1e6:.2f} M trained parameters | batch {cfg.batch} = {cfg.batch // world} × {world} "
              f"ranks | data {t_data:.0f}s, features {t_feat:.0f}s" + (f" | resumed at step {start}" if start else ""))
    per_rank = cfg.batch // world
    baseline = train["chunk"].mean(0, keepdim=True)                  # the mean-action baseline [1, H, 7]

    bar = tqdm(range(start, cfg.steps), disable=not master, desc="vla", dynamic_ncols=True)
    history, metrics, t_val, t1 = [], {}, 0.0, time.time()
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * lr_at(step, cfg.steps, 0.03, floor=0.0)    # 3 % warm-up, cosine to 0
        # batch and diffusion noise drawn from (seed, rank, step) alone: --resume replays the run exactly
        rng = np.random.default_rng([cfg.seed, rank, step])
        idx = rng.integers(0, len(mine), per_rank)
        noise = torch.Generator(device).manual_seed(int(rng.integers(2 ** 62)))
        if cfg.finetune_backbone:                                    # raw inputs: the wrapped forward encodes them
            feats = {"inputs": prepare(proc, [sub["img"][i] for i in idx], [sub["wrist"][i] for i in idx]
                                       if cfg.wrist else None, [sub["text"][i] for i in idx], device)}
        else:
            c, cm = cond[idx], mask[idx]
            if blind is not None:                                    # drawn only then: other runs stay bit-identical
                j = blind[2][idx]
                c, cm = drop_images(c, cm, blind[0][j], blind[1][j], torch.from_numpy(rng.random(per_rank) < cfg.image_dropout))
            feats = {"cond": c.to(device), "cond_mask": cm.to(device)}
        loss = wrapped(sub["chunk"][idx].to(device), sub["proprio"][idx].to(device), generator=noise, **feats)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        history.append(loss.item())
        if master:
            bar.set_postfix(loss=f"{np.mean(history[-20:]):.4f}", lr=f"{opt.param_groups[0]['lr']:.1e}")
            if cfg.val_every and (step + 1) % cfg.val_every == 0 and step + 1 < cfg.steps:
                tv = time.time()
                m = evaluate(cfg, head, vfeat, model, proc, val, layer, device, baseline)
                t_val += time.time() - tv
                bar.write(f"step {step + 1}: val L1 {m['val_l1']:.4f} (mean-action baseline {m['mean_action_l1']:.4f})")
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
                os.makedirs(cfg.out, exist_ok=True)
                save_resume(vla, opt, step + 1, cfg.out)
    t_train = time.time() - t1 - t_val
    end_distributed(ddp)                                             # no collective after this point
    if master:
        metrics = final_evaluation(cfg, ds, ns, head, hcfg, (model, proc, fast, vocab, layer), vfeat, train, val, baseline,
                                   history, dict(load_data=t_data, features=t_feat, train=t_train, validate=t_val), t0,
                                   device)
    return metrics


def final_evaluation(cfg: Config, ds, ns, head, hcfg, backbone: tuple, vfeat, train, val, baseline, history,
                     times: dict, t0: float, device) -> dict:
    """Rank 0 after training: validate on the val frames, print the figures, write --out. Returns the metrics.
    `backbone`: (model, proc, fast, vocab, layer); `times`: seconds per phase so far."""
    model, proc, fast, vocab, layer = backbone
    tv = time.time()
    metrics = evaluate(cfg, head, vfeat, model, proc, val, layer, device, baseline)
    times["validate"] += time.time() - tv
    metrics.update({"train_loss": float(np.mean(history[-50:])) if history else None, "loss_history": history[::10],
                    "steps": cfg.steps, "seconds": round(time.time() - t0, 1),
                    "phase_seconds": {k: round(v, 1) for k, v in times.items()},
                    "layer": layer, "train_frames": len(train["text"]), "val_frames": len(val["text"]),
                    "config": asdict(cfg)})
    print(f"val action L1 {metrics['val_l1']:.4f} vs mean-action baseline {metrics['mean_action_l1']:.4f} | "
          f"val denoising loss {metrics['val_loss']:.4f} | {metrics['seconds']:.0f}s "
          f"(data {times['load_data']:.0f}, features {times['features']:.0f}, train {times['train']:.0f}, "
          f"validation {times['validate']:.0f})")
    save_vla(cfg, head, hcfg, model, proc, fast, vocab, layer, int(ds.meta["image_size"]), ns, metrics,
             {"layout": ds.meta.get("layout"), "tasks": task_list(ds)})
    print(f"wrote {cfg.out}")
    return metrics


def evaluate(cfg: Config, head, vfeat, model, proc, val: dict, layer: int, device, baseline) -> dict:
    """validate() on the val frames: the frozen backbone's val features are cached (vfeat), a fine-tuned
    backbone's are computed afresh."""
    c, m = vfeat if vfeat is not None else cache_features(model, proc, val, cfg, layer, device, desc="val features")
    return validate(head, c, m, val["proprio"], val["chunk"], cfg.ddim_steps, baseline)


def save_vla(cfg: Config, head, hcfg, model, proc, fast, vocab, layer, image_size, ns, metrics, data: dict) -> None:
    """Write --out atomically (into out.tmp, then one rename), keeping --out/resume across the swap. A fine-tuned
    backbone is saved as sft.py saves one, into out/backbone, and vla_config.json points at it (relative path).
    `data`: the demos' layout (eval_libero.py reports an evaluation on another one) and task list (oracle one-hot)."""
    vcfg = {"backbone": "backbone" if cfg.finetune_backbone else os.path.abspath(cfg.backbone),
            "backbone_source": os.path.abspath(cfg.backbone), "finetuned_backbone": cfg.finetune_backbone,
            "features": cfg.features, "layer": layer, "prompt": cfg.prompt, "wrist": cfg.wrist,
            "image_size": image_size, "ddim_steps": cfg.ddim_steps, "head": asdict(hcfg), "norm": ns, **data}
    tmp = cfg.out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_file(head.state_dict(), os.path.join(tmp, "head.safetensors"))
    if cfg.finetune_backbone:
        save_checkpoint(model, proc, fast, vocab, os.path.join(tmp, "backbone"), {})
    write_json(os.path.join(tmp, "vla_config.json"), vcfg)
    write_json(os.path.join(tmp, "metrics.json"), metrics)
    swap_into(tmp, cfg.out)


if __name__ == "__main__":
    main(parse_config())
