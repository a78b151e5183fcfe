"""Training and evaluation examples for the MLLM stages (sft.py, grpo.py): what one example is, how the mixture
of kinds is drawn from demonstrations, where its frame comes from, and how a batch becomes the model's inputs.

    samples = build_samples(ds, episodes, fast, {"reason": 0.5, "fast": 0.5}, seed=0)   # one per (episode, step)
    frames = Frames(ds, episodes)                                                       # upright agentview frames
    batch = collate(samples[:8], [frames(s) for s in samples[:8]], proc, vocab)         # input_ids, labels, pixels

An example is a user turn (the frame, then the prompt text) and an assistant answer whose action tokens are the
FAST ids of the chunk starting at that step (`{ACTIONS}` in the answer text until collate fills it in). The kinds
(caption, vqa, reason, fast) and their text are data/prompts.py's; caption and vqa need mini-LIBERO's privileged
world state.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from data import prompts
from data.demos import DemoDataset, chunk_episode
from data.world import Body, World
from fast_tokenizer import FastTokenizer


@dataclass
class Sample:
    episode: int          # index into the DemoDataset
    t: int                # step within the episode
    kind: str             # vqa | reason | fast
    prompt: str           # user text (the image comes first)
    answer: str           # assistant text, with {ACTIONS} still to fill
    actions: list         # FAST ids of the chunk at t
    signs: list           # the chunk's motion direction per axis (-1/0/+1), for direction accuracy


def task_worlds(ds: DemoDataset) -> dict:
    """(suite, task_id) → (World with that task's bodies, first plan step) for turning sim states into text."""
    from data.scenes import suite_tasks
    out = {}
    for t in ds.meta["tasks"]:
        world = World([Body(**b) for b in t["bodies"]])
        plan = suite_tasks(t["suite"])[t["task_id"]].scene(0)[1]
        out[(t["suite"], t["task_id"])] = (world, plan)
    return out


def build_samples(ds: DemoDataset, episodes: list[int], fast: FastTokenizer, mix: dict, seed: int) -> list[Sample]:
    """One sample per (episode, step); its kind drawn from the mixture."""
    rng = np.random.default_rng(seed)
    privileged = ds.privileged                                # real datasets: no world state, reason/fast only
    worlds = task_worlds(ds) if privileged else None
    scale = None if privileged else prompts.motion_scale(ds.stats)
    kinds, p = list(mix), np.array(list(mix.values()), float) / sum(mix.values())
    eps = [ds.load(e, ["actions", "sim_state", "phase"] if privileged else ["actions", "state"]) for e in episodes]
    chunks_of = [chunk_episode(ep["actions"], fast.time_horizon) for ep in eps]          # [T, H, 7] each
    # one encode call for every chunk: BPE's pass over the merge list is paid once, not once per episode (~20 s)
    all_ids, ends = fast.encode(np.concatenate(chunks_of)), np.cumsum([len(c) for c in chunks_of])
    out = []
    for e, ep, chunks, end in zip(episodes, eps, chunks_of, ends):
        rec = ds.episodes[e]
        ids = all_ids[end - len(chunks):end]
        world, plan = worlds[(rec["suite"], rec["task_id"])] if privileged else (None, None)
        for t in range(len(chunks)):
            if privileged:
                world.set_state(ep["sim_state"][t])
            kind = kinds[rng.choice(len(kinds), p=p)]
            phase = str(ep["phase"][t]) if privileged else ""
            if not privileged and kind in ("vqa", "caption"):
                raise ValueError(f"{kind} samples need mini-LIBERO's privileged world state (see usable_kinds)")
            if kind == "vqa":
                q, a = prompts.vqa(world, rec["language"], plan, phase, chunks[t], rng)
            elif kind == "caption":
                q, a = prompts.caption(world)
            elif kind == "reason":
                q = prompts.reasoning_prompt(rec["language"])
                a = prompts.reasoning_answer(world, phase, chunks[t], rng) if privileged else \
                    prompts.proprio_answer(rec["language"], ep["state"][t], chunks[t], scale, rng)
            else:
                q, a = prompts.fast_prompt(rec["language"]), prompts.fast_answer()
            out.append(Sample(e, t, kind, q, a, list(ids[t]), prompts.motion_signs(chunks[t]).tolist()))
    return out


class Frames:
    """Upright agentview frames of the episodes in use, decompressed once (~50 KB per frame)."""

    def __init__(self, ds: DemoDataset, episodes):
        self.frames = {e: ds.load(e, ["agentview_rgb"])["agentview_rgb"] for e in episodes}

    def __call__(self, s: Sample) -> np.ndarray:
        return self.frames[s.episode][s.t]


def fill_actions(text: str, ids, vocab: dict) -> str:
    return text.replace(prompts.ACTIONS, "".join(f"<act_{i}>" for i in ids))


def collate(samples, images, proc, vocab, with_answer=True):
    """Tokenise a batch by hand (faster than the processor's per-sample path, and explicit):
    prompt = chat template with one <|image_pad|> per merged image token; labels = answer tokens + <|im_end|>."""
    tok = proc.tokenizer
    vis = proc.image_processor(images=list(images), return_tensors="pt")
    n_img = (vis["image_grid_thw"].prod(-1) // proc.image_processor.merge_size ** 2).tolist()
    seqs, labels = [], []
    for s, n in zip(samples, n_img):
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": s.prompt}]}]
        text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        p = tok(text.replace("<|image_pad|>", "<|image_pad|>" * n), add_special_tokens=False)["input_ids"]
        a = tok(fill_actions(s.answer, s.actions, vocab) + "<|im_end|>", add_special_tokens=False)["input_ids"] if with_answer else []
        seqs.append(p + a)
        labels.append([-100] * len(p) + a)
    L, pad = max(map(len, seqs)), tok.pad_token_id
    left = not with_answer                                  # generation needs left padding, training does not care
    ids = torch.full((len(seqs), L), pad)
    lab = torch.full((len(seqs), L), -100)
    att = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, (s, l) in enumerate(zip(seqs, labels)):
        sl = slice(L - len(s), L) if left else slice(0, len(s))
        ids[i, sl], lab[i, sl], att[i, sl] = torch.tensor(s), torch.tensor(l), 1
    image_id = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    return {"input_ids": ids, "attention_mask": att, "labels": lab, "pixel_values": vis["pixel_values"],
            "image_grid_thw": vis["image_grid_thw"], "mm_token_type_ids": (ids == image_id).int()}
