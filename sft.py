"""Stage 1 — supervised fine-tuning of a Qwen2.5-VL backbone that thinks in language and answers in FAST tokens.

Reads a backbone (`--model`), the demonstrations (`--data`: any format data.demos.open_dataset reads) and a FAST
tokenizer; writes `--out DIR`: a checkpoint `from_pretrained` loads (safetensors), the processor,
`fast_tokenizer.json`, `action_vocab.json`, `stage2.json` (demo episodes reserved for GRPO) and `metrics.json`.

The vocabulary gains <ACTION_START>, <ACTION_END> and one token <act_i> per FAST id (model.add_action_vocab). The
answer format is RoboAlign's:  <think>…</think><answer><ACTION_START><act_…>…<ACTION_END></answer>.
Three data kinds, mixed by `--mix`: embodied VQA, reasoning → FAST, plain FAST generation (data/prompts.py); and
for the paper's Tab. 6 targets, `choice` (reasoning, then the letter of the right movement among four) and `trace`
(reasoning, then the gripper's waypoints in the image), which grpo.py's --reward choice / trace align on.
VQA and captions need mini-LIBERO's privileged world state; on real datasets (LIBERO HDF5, LeRobot, BridgeV2)
those kinds are skipped with a note and the reasoning is built from the instruction, proprio and the chunk's motion.

    python sft.py                                     # default: from the shipped tiny backbone, ~4 min on 2 CPUs
    python -m data.mini_libero demos --layout libero-x3 --out out/demos_x3      # the shipped backbone, re-made:
    python sft.py --model tiny --data out/demos_x3 --mix caption=0.4,vqa=0.3,fast=0.3 --steps 3000 --lr 1.5e-3 \
        --eval-kinds caption,fast --out out/tiny-vl-0
    python sft.py --model out/tiny-vl-0 --data out/demos_x3 --mix caption=0.4,vqa=0.3,fast=0.3 --steps 1500 \
        --lr 1e-3 --eval-kinds caption,fast --out assets/tiny-vl                 # ~1 + 1.5 h on 2 CPUs
    torchrun --nproc_per_node 2 sft.py --steps 20     # DDP (gloo on CPU, nccl on GPU)
    torchrun --nproc_per_node 2 sft.py --steps 20 --fsdp   # FSDP2: weights, gradients, AdamW state sharded
    python sft.py --model out/sft --episodes stage2 --mix reason=1 --steps 0 --epochs 1 --out out/ecot
        # the ECoT-style control (paper Tab. 7): one more SFT epoch on GRPO's prompts, reasoning targets

The tiny backbone (`--model tiny`, and `assets/tiny-vl` which ships with the repository) is a small Qwen2.5-VL
plus a vision adapter, pretrained by the commands above on scenes three times as varied as LIBERO's (libero-x3), so
that it must find the objects instead of memorising one layout; model.py's docstring says why it needs an adapter.
The shipped weights took one more step than these commands (an intermediate run on an earlier version of the
world); each step's config, figures and time are in assets/tiny-vl/metrics_step1.json, metrics_step2.json and
metrics.json.

Full-size recipe (paper: Qwen2.5-VL-7B-Instruct, 2.28 M samples, frozen vision encoder, lr 2e-5 cosine,
warmup 0.03, 1 epoch; 8× H200 ≈ 30 h). fp32 AdamW needs 16 bytes a parameter, 112 GB for 7 B: one GPU cannot
hold a DDP replica, so the recipe shards with FSDP2 (14 GB of weights + state per GPU over 8):
    torchrun --nproc_per_node 8 sft.py --model Qwen/Qwen2.5-VL-7B-Instruct --data path/to/data --steps 0 \\
        --lr 2e-5 --warmup 0.03 --epochs 1 --global-batch 128 --micro-batch 4 --freeze-vision --bf16 --grad-ckpt --fsdp

Choices named here: loss = cross-entropy summed over response tokens (prompt and image tokens masked) divided
by the response tokens of the whole global batch (a token-level mean, identical for any split into micro-batches
and ranks); AdamW, linear warm-up then cosine decay to 10 %; fp32 on CPU, bf16 on GPU; DDP by default, FSDP2
(`fully_shard` per ViT block and decoder layer, then the root) with --fsdp.
"""
from __future__ import annotations

import math
import os
import re
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.fsdp import FSDPModule
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import config
from config import arg, exits_on_bad_files, read_json
from data import prompts
from data.demos import DemoDataset, open_dataset
from fast_tokenizer import FastTokenizer
from model import (QWEN_SPECIALS, CheckpointError, add_action_vocab, build_tiny, configure_optimizers, end_distributed,
                   full_state, load_backbone, load_fast_tokenizer, load_resume, lr_at,
                   parse_actions, prefix_ratio, reset_action_rows, save_checkpoint, save_resume, setup_distributed,
                   shard)
from samples import TARGET_KINDS, Frames, Sample, build_samples, collate, target_reward


@dataclass
class Config:
    model: str = arg("assets/tiny-vl", "backbone: 'tiny' (build one), a checkpoint dir, or a hub id such as Qwen/Qwen2.5-VL-7B-Instruct")
    data: str = arg("out/demos", "dataset: mini-LIBERO demos, LIBERO HDF5 files or a LeRobot dataset (README: datasets)")
    data_format: str = arg("auto", "format of --data: auto | mini | libero_hdf5 | lerobot")
    drop_noops: bool = arg(False, "drop no-op steps from the demos (OpenVLA's filter)")
    fast: str = arg("", "FAST tokenizer dir or json; '' = the one inside --model, else out/fast")
    out: str = arg("out/sft", "output checkpoint directory")
    mix: str = arg("caption=0.15,vqa=0.15,reason=0.5,fast=0.2", "data mixture: kind=weight for caption, vqa, reason, fast, choice, trace")
    steps: int = arg(200, "optimizer steps (0: derive from --epochs)")
    epochs: float = arg(0.0, "epochs over the training samples when --steps is 0")
    global_batch: int = arg(32, "sequences per optimizer step, over all ranks and micro-steps")
    micro_batch: int = arg(16, "sequences per forward pass on one rank")
    lr: float = arg(5e-4, "peak learning rate (paper 2e-5 on the 7B model; the tiny model wants ~1e-3 from scratch, 5e-4 after pretraining)")
    vision_lr_mult: float = arg(1.0, "learning-rate multiplier for the vision tower and adapter")
    warmup: float = arg(0.03, "fraction of steps with linear warm-up (paper 0.03)")
    weight_decay: float = arg(0.01, "AdamW weight decay")
    grad_clip: float = arg(1.0, "max gradient norm (0: off)")
    freeze_vision: bool = arg(False, "freeze the ViT (the paper freezes it; the tiny model's must still learn)")
    stage2_frac: float = arg(0.1, "fraction of training episodes reserved for GRPO (never seen by SFT)")
    episodes: str = arg("split", "what to train on: 'split' (train episodes minus the GRPO reserve) or 'stage2' (only "
                                 "the episodes --model's stage2.json reserves for GRPO: the ECoT-style control, Tab. 7)")
    eval_every: int = arg(0, "evaluate every N steps (0: only at the end)")
    eval_prompts: int = arg(96, "held-out prompts per evaluated kind for the generation metrics")
    eval_kinds: str = arg("reason", "kinds evaluated on held-out episodes: reason, fast, vqa, caption, choice, trace (comma list)")
    max_new_tokens: int = arg(96, "generation limit for the held-out evaluation")
    save_every: int = arg(100, "write a resumable checkpoint every N steps")
    resume: bool = arg(False, "continue from --out/resume if present")
    bf16: bool = arg(False, "bfloat16 autocast (GPU); CPU runs stay fp32")
    grad_ckpt: bool = arg(False, "gradient checkpointing (saves memory, costs ~30 % speed)")
    fsdp: bool = arg(False, "FSDP2 instead of DDP: shard weights, gradients and AdamW state over the ranks (for models that do not fit on one GPU)")
    trust_remote_code: bool = arg(False, "allow a hub checkpoint's own code (off: files are data, not code)")
    seed: int = arg(0, "random seed (rank is added)")


def parse_config(argv=None) -> Config:
    return config.parse_config(Config, argv, __doc__)


def response_loss(model, batch, n_tokens: float) -> torch.Tensor:
    """Σ cross-entropy over response tokens / n_tokens (the global batch's response-token count / world)."""
    labels = batch.pop("labels")
    logits = model(**batch).logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=-100, reduction="sum") / n_tokens


# ----------------------------------------------------------------------------- evaluation
ANSWER_RE = {"reason": re.compile(r"^<think>(.+?)</think><answer>(.*?)</answer>", re.S),
             "fast": re.compile(r"^<answer>(.*?)</answer>", re.S)}
ANSWER_RE["choice"] = ANSWER_RE["trace"] = ANSWER_RE["reason"]


def mean_ci(x) -> list:
    """[mean, low, high]: the mean with a normal-approximation 95 % interval over prompts."""
    x = np.asarray(x, float)
    h = 1.96 * x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else 0.0
    return [float(x.mean()), float(x.mean() - h), float(x.mean() + h)]


def paired_change(after: dict, before: dict) -> dict:
    """{kind/metric: [mean, lo, hi]} of after − before per prompt, over the metrics both measured on the same
    prompts in the same order: a paired interval, far tighter than comparing two unpaired ones."""
    return {k: mean_ci(np.subtract(after[k], before[k])) for k in after if k in before and len(after[k]) == len(before[k])}


GRID_RE = re.compile(r"\((\d+), (\d+)\)")


def score(sample: Sample, gen_ids: list[int], text: str, vocab: dict, fast: FastTokenizer) -> dict:
    """Per-prompt figures. Action kinds: format, exact match, prefix ratio r_a, L1 of the decoded actions in
    normalised units (1.0 when nothing decodes), direction accuracy (per-axis sign of the mean motion).
    Reasoning about mini-LIBERO also gets `where`: the share of the target's grid positions ("(4, 7)": gripper,
    then the object in focus) that the generated <think> states exactly, in order — whether the model reads the
    scene in language, separately from whether its action tokens follow. VQA: exact match of the answer text."""
    if sample.kind in TARGET_KINDS:                  # the other RL targets: format and the target's own reward
        got = text.split("<|im_end|>")[0]
        return {"format": float(bool(ANSWER_RE[sample.kind].match(got))),
                "accuracy": target_reward(sample.kind, got, sample.target)}
    if sample.kind in ("vqa", "caption"):           # exact answer; for captions, the share of places right
        got = text.split("<|im_end|>")[0].strip()
        if sample.kind == "vqa":
            return {"accuracy": float(got == sample.answer)}
        want, have = sample.answer.split(". "), set(got.split(". "))
        return {"accuracy": float(np.mean([w in have for w in want]))}
    acts = parse_actions(gen_ids, vocab)
    row = {"format": float(bool(ANSWER_RE[sample.kind].match(text)) and acts is not None),
           "exact": float(acts == sample.actions), "prefix": prefix_ratio(acts, sample.actions),
           "l1": 1.0, "direction": 0.0}
    if acts:
        dec, _ = fast.decode([acts], relaxed=True)
        tgt, _ = fast.decode([sample.actions])
        row["l1"] = float(np.abs(fast.normalize(dec[0]) - fast.normalize(tgt[0])).mean())
        row["direction"] = float(np.mean(prompts.motion_signs(dec[0]) == np.array(sample.signs)))
    want = GRID_RE.findall(sample.answer) if sample.kind == "reason" else []
    if want:                                      # only privileged-state reasoning names grid positions
        got = GRID_RE.findall(text.split("</think>")[0])
        row["where"] = float(np.mean([i < len(got) and got[i] == w for i, w in enumerate(want)]))
    return row


def forced_prefix(model, batch: dict, vocab: dict) -> list[float]:
    """Per sequence of a training-style batch: the prefix ratio r_a of its action tokens when the model is handed
    the true response before each of them (teacher forcing). Greedy decoding that starts from the true reasoning
    gets exactly this prefix, so on reasoning samples it splits the task in two: reading the scene into the
    <think> text, and turning a given <think> text into action tokens."""
    labels = batch["labels"][:, 1:]                                  # position t predicts token t + 1
    pred = model(**{k: v.to(model.device) for k, v in batch.items() if k != "labels"}).logits[:, :-1].argmax(-1).cpu()
    is_act = (labels >= vocab["act_offset"]) & (labels < vocab["act_offset"] + vocab["n_actions"])
    return [float((p[m] == l[m]).int().cumprod(0).sum()) / max(1, int(m.sum())) for p, l, m in zip(pred, labels, is_act)]


@torch.no_grad()
def evaluate(model, proc, vocab, fast, samples, frames, max_new_tokens=96, batch=32, shuffle=False, seed=0,
             per_prompt=False):
    """Greedy generation on held-out prompts → {kind/metric: [mean, lo, hi]} (and, with per_prompt, the values
    per prompt too). shuffle=True permutes the images across prompts: the control that tells whether the
    model reads its image (figures fall to chance). A sharded (FSDP) model needs every rank in each forward, so
    then every rank calls this with the same prompts and gets the same figures."""
    model.eval()
    order = np.random.default_rng(seed).permutation(len(samples)) if shuffle else np.arange(len(samples))
    tok = proc.tokenizer
    banned = tok.convert_tokens_to_ids(QWEN_SPECIALS[3:])           # vision tokens can never be generated
    rows = {}
    for b0 in range(0, len(samples), batch):
        sb = samples[b0:b0 + batch]
        inp = collate(sb, [frames(samples[order[b0 + i]]) for i in range(len(sb))], proc, vocab, with_answer=False)
        inp.pop("labels")
        inp = {k: v.to(model.device) for k, v in inp.items()}
        out = model.generate(**inp, max_new_tokens=max_new_tokens, do_sample=False, suppress_tokens=banned,
                             eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tok.pad_token_id,
                             synced_gpus=isinstance(model, FSDPModule))   # sharded: every rank steps in lockstep
        for s, g in zip(sb, out[:, inp["input_ids"].shape[1]:].tolist()):
            for k, v in score(s, g, tok.decode(g, skip_special_tokens=False), vocab, fast).items():
                rows.setdefault(f"{s.kind}/{k}", []).append(v)
        idx = [b0 + i for i, s in enumerate(sb) if s.kind == "reason"]
        if idx:              # the same prompts and images, the true reasoning given: is the <think> text the gap?
            forced = collate([samples[j] for j in idx], [frames(samples[order[j]]) for j in idx], proc, vocab)
            rows.setdefault("reason/prefix_true_think", []).extend(forced_prefix(model, forced, vocab))
    model.train()
    summary = {k: mean_ci(v) for k, v in rows.items()}
    return (summary, rows) if per_prompt else summary


# ----------------------------------------------------------------------------- training
KINDS = ("caption", "vqa", "reason", "fast", "choice", "trace")


def parse_mix(s: str) -> dict:
    try:
        mix = {k: float(v) for k, v in (kv.split("=") for kv in s.split(","))}
    except ValueError:
        raise SystemExit(f"sft.py: --mix {s!r}: expected kind=weight pairs, e.g. vqa=0.3,reason=0.5,fast=0.2")
    if not mix or set(mix) - set(KINDS) or sum(mix.values()) <= 0:
        raise SystemExit(f"sft.py: --mix {s!r}: kinds are {', '.join(KINDS)} with positive total weight")
    return mix


PUBLIC_KINDS = ("reason", "fast", "choice")      # what a dataset without privileged state can give


def usable_kinds(ds, mix: dict, eval_kinds: list, verbose: bool = True) -> tuple[dict, list]:
    """Drop the kinds that need privileged world state (caption, vqa, trace) when the dataset has none, with a note."""
    if ds.privileged:
        return mix, eval_kinds
    dropped = sorted((set(mix) | set(eval_kinds)) - set(PUBLIC_KINDS))
    if dropped and verbose:
        print(f"note: {ds.root} has no privileged world state: skipping {', '.join(dropped)} samples "
              f"(reason, fast and choice only; reasoning from instruction, proprio and motion)")
    mix = {k: v for k, v in mix.items() if k in PUBLIC_KINDS}
    if not mix or sum(mix.values()) <= 0:
        raise SystemExit(f"sft.py: --mix has no reason, fast or choice weight, the only kinds {ds.root} supports")
    return mix, [k for k in eval_kinds if k in PUBLIC_KINDS] or ["reason"]


def split_episodes(ds: DemoDataset, stage2_frac: float, seed: int):
    train = ds.indices("train")
    rng = np.random.default_rng(seed)
    stage2 = sorted(rng.choice(train, int(round(stage2_frac * len(train))), replace=False).tolist()) if stage2_frac > 0 else []
    keep = set(train) - set(stage2)
    return [e for e in train if e in keep], stage2, ds.indices("val")


def reserved_episodes(model: str, demos: str) -> list[int]:
    """The GRPO episodes an sft.py checkpoint reserved (its stage2.json), for --episodes stage2."""
    path = os.path.join(model, "stage2.json")
    if not os.path.isfile(path):
        raise SystemExit(f"sft.py: --episodes stage2 needs {path}: pass an sft.py checkpoint as --model")
    st = read_stage2(path)
    reserved_from = st.get("data") or st.get("demos")              # "demos": checkpoints from before --data
    if os.path.abspath(reserved_from) != os.path.abspath(demos):
        raise SystemExit(f"sft.py: {path} reserves episodes of {reserved_from}, not of --data {demos}")
    if not st["episodes"]:
        raise SystemExit(f"sft.py: {path} reserves no episodes (that SFT ran with --stage2-frac 0)")
    return st["episodes"]


def read_stage2(path: str) -> dict:
    """stage2.json of an sft.py checkpoint: {"data": dir, "episodes": [ids], ...}; CheckpointError if malformed."""
    st = read_json(path)
    if not isinstance(st, dict) or not isinstance(st.get("episodes"), list) or not (st.get("data") or st.get("demos")):
        raise CheckpointError(f"{path}: expected a JSON object with 'data' and a list of 'episodes' (sft.py writes it)")
    return st


def choose_episodes(cfg: Config, ds) -> tuple[list, list, list]:
    """(train, GRPO reserve, val) episodes: --episodes split holds out --stage2-frac of the train split for GRPO;
    --episodes stage2 trains on exactly the reserve --model's stage2.json names (the ECoT-style control)."""
    train_eps, stage2_eps, val_eps = split_episodes(ds, cfg.stage2_frac, cfg.seed)
    if cfg.episodes == "stage2":                                   # the reserve travels on to this run's stage2.json
        train_eps = stage2_eps = reserved_episodes(cfg.model, cfg.data)
    elif cfg.episodes != "split":
        raise SystemExit(f"sft.py: --episodes {cfg.episodes!r}: choose split or stage2")
    return train_eps, stage2_eps, val_eps


def accumulation_steps(cfg: Config, world_size: int) -> int:
    """Micro-steps per optimizer step: the global batch is fixed, accumulation is derived (and must divide)."""
    micro_steps = cfg.global_batch // (cfg.micro_batch * world_size)
    if micro_steps < 1 or cfg.global_batch != micro_steps * cfg.micro_batch * world_size:
        raise SystemExit(f"sft.py: --global-batch {cfg.global_batch} must be a multiple of --micro-batch × ranks "
                         f"({cfg.micro_batch} × {world_size})")
    return micro_steps


def load_fast(cfg: Config, model_fast):
    if cfg.fast:
        path = cfg.fast if cfg.fast.endswith(".json") else os.path.join(cfg.fast, "fast_tokenizer.json")
    elif model_fast is not None:
        return model_fast
    else:
        path = "out/fast/fast_tokenizer.json"
    if not os.path.isfile(path):
        raise SystemExit(f"sft.py: no FAST tokenizer at {path} (run fast_tokenizer.py, or pass --fast)")
    return load_fast_tokenizer(path)


def load_model(cfg: Config, ds, train_eps: list[int], device, master: bool):
    """(model on `device`, processor, FAST tokenizer, action vocab), ready to train (--freeze-vision, --grad-ckpt)."""
    model, proc, fast, vocab = build_or_load(cfg, ds, train_eps, master)
    proc.tokenizer.padding_side = "left"
    model.to(device)
    if cfg.freeze_vision:
        model.model.visual.requires_grad_(False)
    if cfg.grad_ckpt:
        model.gradient_checkpointing_enable()
    return model, proc, fast, vocab


def build_or_load(cfg: Config, ds, train_eps: list[int], master: bool):
    """The tiny backbone built from scratch (its text tokenizer trained on this dataset's prompts and answers),
    or --model loaded and given the action vocabulary."""
    if cfg.model == "tiny":
        fast = load_fast(cfg, None)
        corpus_samples = build_samples(ds, train_eps[:: max(1, len(train_eps) // 60)],
                                       fast, {k: 1 for k in KINDS if k in PUBLIC_KINDS or ds.privileged}, cfg.seed)
        corpus = [s.prompt for s in corpus_samples] + [s.answer for s in corpus_samples] + \
                 ["You are a helpful assistant.", "system user assistant"] + [e["language"] for e in ds.episodes]
        torch.manual_seed(cfg.seed)                                 # identical initial weights on every rank
        model, proc, vocab = build_tiny(corpus, fast)
        return model, proc, fast, vocab
    model, proc, model_fast, vocab = load_backbone(cfg.model, cfg.trust_remote_code, need_actions=False)
    fast = load_fast(cfg, model_fast)
    if vocab is None:
        vocab = add_action_vocab(model, proc.tokenizer, fast.vocab_size)
    elif vocab["n_actions"] != fast.vocab_size:
        raise SystemExit(f"sft.py: the checkpoint has {vocab['n_actions']} action tokens, the FAST tokenizer {fast.vocab_size}")
    elif model_fast is not None and fast.to_dict() != model_fast.to_dict():
        reset_action_rows(model, vocab)          # same ids, new meanings: what the rows learnt is wrong now
        if master:
            print(f"sft.py: --fast differs from {cfg.model}'s FAST tokenizer: action embeddings re-initialised")
    return model, proc, fast, vocab


def held_out(cfg: Config, ds, val_eps: list[int], fast, eval_kinds: list) -> list[Sample]:
    """--eval-prompts held-out prompts per evaluated kind, the same for every run with the same data."""
    val = []
    for k in eval_kinds:
        vk = build_samples(ds, val_eps, fast, {k: 1.0}, cfg.seed + 1)
        val += [vk[i] for i in np.random.default_rng(0).permutation(len(vk))[: cfg.eval_prompts]]
    return val


def banner(cfg: Config, device, world_size: int, parallel: str, model, micro_steps: int, train, mix, val, stage2_eps,
           data_s: float) -> str:
    """The start-up line: device and dtype (with the reason), size, how the global batch splits, the data."""
    dtype = "bf16 autocast (GPU)" if cfg.bf16 and device.type == "cuda" else "fp32 (CPU: bf16 autocast is slow and lossy here)"
    return (f"sft.py | device {device} × {world_size} ({parallel}) | {dtype} | "
            f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters | "
            f"batch {cfg.global_batch} = {cfg.micro_batch} micro × {micro_steps} accum × {world_size} ranks | "
            f"{len(train)} train samples {dict((k, sum(s.kind == k for s in train)) for k in mix)} | "
            f"{len(val)} held-out prompts | {len(stage2_eps)} episodes kept for GRPO | data {data_s:.1f}s")


def step_inputs(cfg: Config, train: list[Sample], step: int, rank: int, world_size: int, micro_steps: int, frames,
                proc, vocab) -> list[dict]:
    """This rank's micro-batches of step `step`: the global batch is drawn from (seed, step) alone, identical on
    every rank (so --resume replays it), and rank r takes every world_size-th sample from r."""
    idx = np.random.default_rng([cfg.seed, step]).choice(len(train), cfg.global_batch, replace=False)
    mine = [train[i] for i in idx[rank::world_size]]
    batches = [mine[i * cfg.micro_batch:(i + 1) * cfg.micro_batch] for i in range(micro_steps)]
    return [collate(b, [frames(s) for s in b], proc, vocab) for b in batches]


def all_sum(x: float, ddp: bool) -> float:
    """x summed over the ranks (x itself in one process)."""
    if not ddp:
        return float(x)
    t = torch.tensor(float(x))
    dist.all_reduce(t)
    return t.item()


def make_optimizer(cfg: Config, model):
    """AdamW with the vision tower and adapter in their own groups at lr · --vision-lr-mult."""
    is_vision = lambda n: "visual" in n or "vision_adapter" in n
    named = list(model.named_parameters())
    return configure_optimizers([{"params": [(n, p) for n, p in named if not is_vision(n)], "lr": cfg.lr},
                                 {"params": [(n, p) for n, p in named if is_vision(n)], "lr": cfg.lr * cfg.vision_lr_mult}],
                                cfg.weight_decay, lr=cfg.lr, betas=(0.9, 0.98))


def build_trainer(cfg: Config, model, device, ddp: bool, fsdp: bool):
    """(wrapped, opt, start): FSDP2 shards the module in place, DDP wraps it, every loss-bearing forward goes
    through `wrapped`; AdamW; the step to start from (--resume)."""
    if fsdp:                                                        # before the optimizer: it must see the shards
        shard(model)
    opt = make_optimizer(cfg, model)
    start = load_resume(model, opt, cfg.out) if cfg.resume else 0
    wrapped = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if ddp and not fsdp else model
    return wrapped, opt, start


def evaluate_before(cfg: Config, model, proc, vocab, fast, val, frames, master: bool) -> tuple[dict, dict]:
    """The held-out figures of the model as loaded, and their values per prompt for the paired change (a fresh
    tiny model skips this: nothing to measure)."""
    before, rows = evaluate(model, proc, vocab, fast, val, frames, cfg.max_new_tokens, per_prompt=True)
    if master:
        print("before:", {k: round(v[0], 3) for k, v in before.items()})
    return before, rows


def progress_eval(model, proc, vocab, fast, val, frames, max_new_tokens: int) -> str:
    """A mid-run look at half the held-out prompts, with true and with shuffled images: 'kind/metric a/b ...'."""
    m = evaluate(model, proc, vocab, fast, val, frames, max_new_tokens)
    c = evaluate(model, proc, vocab, fast, val, frames, max_new_tokens, shuffle=True)
    return " ".join(f"{k} {v[0]:.3f}/{c[k][0]:.3f}" for k, v in m.items() if not k.endswith("l1"))


def finish(cfg: Config, raw, proc, fast, vocab, val, frames, metrics: dict, summary: dict, stage2_eps: list[int],
           fsdp: bool, master: bool, before_rows: dict | None = None) -> None:
    """Final held-out evaluation (true and shuffled images), the changes paired over the same prompts (after −
    before: what training did; after − shuffled: what the image decides), then the checkpoint. Under FSDP every
    rank evaluates and gathers the weights (collectives); rank 0 prints and writes."""
    after, rows = evaluate(raw, proc, vocab, fast, val, frames, cfg.max_new_tokens, per_prompt=True)
    shuffled, shuffled_rows = evaluate(raw, proc, vocab, fast, val, frames, cfg.max_new_tokens, shuffle=True,
                                       per_prompt=True)
    weights = full_state(raw) if fsdp else None                     # FSDP: gathered by every rank
    if not master:
        return
    metrics.update({"after": after, "after_image_shuffle": shuffled, "image_effect": paired_change(rows, shuffled_rows)})
    if before_rows is not None:
        metrics["change"] = paired_change(rows, before_rows)
    metrics.update(summary)
    print("after:          ", {k: [round(x, 3) for x in v] for k, v in after.items()})
    print("images shuffled:", {k: [round(x, 3) for x in v] for k, v in shuffled.items()})
    for k in ("change", "image_effect"):
        if k in metrics:
            print(f"{k + ':':16}", {m: [round(x, 3) for x in v] for m, v in metrics[k].items()})
    save_checkpoint(raw, proc, fast, vocab, cfg.out, state_dict=weights, extra={
        "metrics.json": metrics, "stage2.json": {"data": os.path.abspath(cfg.data), "data_format": cfg.data_format,
                                                 "drop_noops": cfg.drop_noops, "episodes": stage2_eps},
        "sft_config.json": asdict(cfg)})
    print(f"wrote {cfg.out} ({summary['seconds']:.0f}s)")


@exits_on_bad_files("sft.py")
def main(cfg: Config) -> dict:
    ddp, rank, world_size, device = setup_distributed(cfg.seed)
    master = rank == 0
    fsdp = ddp and cfg.fsdp                                        # one process: nothing to shard
    runs_model = master or fsdp             # evaluates, gathers and saves the model: every rank when it is sharded
    mix = parse_mix(cfg.mix)
    ds = open_dataset(cfg.data, cfg.data_format, cfg.drop_noops)
    mix, eval_kinds = usable_kinds(ds, mix, cfg.eval_kinds.split(","), master)
    train_eps, stage2_eps, val_eps = choose_episodes(cfg, ds)
    model, proc, fast, vocab = load_model(cfg, ds, train_eps, device, master)

    t0 = time.time()
    train = build_samples(ds, train_eps, fast, mix, cfg.seed)
    val = held_out(cfg, ds, val_eps, fast, eval_kinds)
    frames = Frames(ds, sorted(set(train_eps) | set(val_eps)))

    micro_steps = accumulation_steps(cfg, world_size)
    total = cfg.steps or max(1, int(cfg.epochs * len(train) / cfg.global_batch))
    wrapped, opt, start = build_trainer(cfg, model, device, ddp, fsdp)
    raw = model                                                     # unwrapped handle: saving and generation
    if master:
        print(banner(cfg, device, world_size, "FSDP2" if fsdp else "DDP" if ddp else "one process", raw, micro_steps,
                     train, mix, val, stage2_eps, time.time() - t0))

    before, before_rows = evaluate_before(cfg, raw, proc, vocab, fast, val, frames, master) \
        if runs_model and start == 0 and cfg.model != "tiny" else (None, None)
    metrics = {"before": before}
    history = []
    bar = tqdm(range(start, total), disable=not master, desc="sft", dynamic_ncols=True)
    tok_count, t_last = 0, time.time()
    for step in bar:
        inputs = step_inputs(cfg, train, step, rank, world_size, micro_steps, frames, proc, vocab)   # micro-batches
        n_tok = sum(int((x["labels"] != -100).sum()) for x in inputs)
        n_norm = all_sum(n_tok, ddp) / world_size                   # DDP and FSDP average gradients over ranks
        for g in opt.param_groups:
            g["lr"] = g.setdefault("base_lr", g["lr"]) * lr_at(step, total, cfg.warmup)
        loss_sum = 0.0
        for i, x in enumerate(inputs):
            x = {k: v.to(device) for k, v in x.items()}
            if fsdp:                                                # sync gradients on the last micro-step only
                wrapped.set_requires_gradient_sync(i == len(inputs) - 1)
            elif ddp:
                wrapped.require_backward_grad_sync = i == len(inputs) - 1
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda"):
                loss = response_loss(wrapped, x, n_norm)
            loss.backward()
            loss_sum += loss.item()
        loss_sum = all_sum(loss_sum, ddp) / world_size              # log the global loss, not rank 0's share
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tok_count += sum(int(x["attention_mask"].sum()) for x in inputs)
        history.append(loss_sum)
        if master:
            dt = time.time() - t_last
            bar.set_postfix(loss=f"{loss_sum:.3f}", lr=f"{opt.param_groups[0]['lr']:.1e}",
                            tok_s=f"{tok_count * world_size / max(dt, 1e-9):.0f}")
        if runs_model and cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < total:
            line = progress_eval(raw, proc, vocab, fast, val[::2], frames, cfg.max_new_tokens)
            if master:
                bar.write(f"step {step + 1} (true / shuffled images): {line}")
        if runs_model and cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total:
            state = full_state(raw, opt)                            # FSDP: gathered by every rank
            if master:
                os.makedirs(cfg.out, exist_ok=True)
                save_resume(raw, opt, step + 1, cfg.out, state)
    train_time = time.time() - t0

    if not fsdp:
        end_distributed(ddp)                  # DDP: no collective after this point; rank 0 evaluates and writes alone
    if runs_model:
        finish(cfg, raw, proc, fast, vocab, val, frames, metrics, stage2_eps=stage2_eps, fsdp=fsdp, master=master,
               before_rows=before_rows, summary={
            "loss_first": history[0] if history else None,
            "loss_last": float(np.mean(history[-10:])) if history else None, "loss_history": history, "steps": total,
            "train_samples": len(train), "seconds": round(train_time, 1), "config": asdict(cfg)})
    if fsdp:
        end_distributed(ddp)                  # FSDP: finish gathered the sharded weights on every rank
    return metrics


if __name__ == "__main__":
    main(parse_config())
