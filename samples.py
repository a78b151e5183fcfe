"""Training and evaluation examples for the MLLM stages (sft.py, grpo.py): what one example is, how the mixture
of kinds is drawn from demonstrations, where its frame comes from, and how a batch becomes the model's inputs.

    samples = build_samples(ds, episodes, fast, {"reason": 0.5, "fast": 0.5}, seed=0)   # one per (episode, step)
    frames = Frames(ds, episodes)                                                       # upright agentview frames
    batch = collate(samples[:8], [frames(s) for s in samples[:8]], proc, vocab)         # input_ids, labels, pixels

An example is a user turn (the frame, then the prompt text) and an assistant answer whose action tokens are the
FAST ids of the chunk starting at that step (`{ACTIONS}` in the answer text until collate fills it in). The kinds
(caption, vqa, reason, fast, and the two other RL targets: choice, a multiple-choice question about the chunk's
movement, and trace, the gripper's path in the image over the chunk) and their text are data/prompts.py's;
caption, vqa and trace need mini-LIBERO's privileged world state. `target_reward` reads the last two back
(sft.py's evaluation and grpo.py's reward).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from data import prompts
from data.demos import DatasetError, DemoDataset, chunk_episode
from data.world import Body, World
from fast_tokenizer import FastTokenizer


@dataclass
class Sample:
    episode: int          # index into the DemoDataset
    t: int                # step within the episode
    kind: str             # caption | vqa | reason | fast | choice | trace
    prompt: str           # user text (the image comes first)
    answer: str           # assistant text, with {ACTIONS} still to fill
    actions: list         # FAST ids of the chunk at t
    signs: list           # the chunk's motion direction per axis (-1/0/+1), for direction accuracy
    target: str = ""      # choice: the right letter; trace: the gripper's waypoints ('(c, r) …'); else unused


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
    if not privileged and "trace" in mix:
        raise DatasetError(f"{ds.root}: trace samples need the gripper's position in the image "
                           "(mini-LIBERO's world state)")
    eps = [ds.load(e, ["actions", "sim_state", "phase"] if privileged else ["actions", "state"]) for e in episodes]
    chunks_of = [chunk_episode(ep["actions"], fast.time_horizon) for ep in eps]          # [T, H, 7] each
    # one encode call for every chunk: BPE's pass over the merge list is paid once, not once per episode (~20 s)
    all_ids, ends = fast.encode(np.concatenate(chunks_of)), np.cumsum([len(c) for c in chunks_of])
    out = []
    for e, ep, chunks, end in zip(episodes, eps, chunks_of, ends):
        rec = ds.episodes[e]
        ids = all_ids[end - len(chunks):end]
        world, plan = worlds[(rec["suite"], rec["task_id"])] if privileged else (None, None)
        eef = gripper_path(world, ep["sim_state"]) if "trace" in mix else None             # [T, 3]
        for t in range(len(chunks)):
            if privileged:
                world.set_state(ep["sim_state"][t])
            kind = kinds[rng.choice(len(kinds), p=p)]
            phase, target = (str(ep["phase"][t]) if privileged else ""), ""
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
            elif kind in ("choice", "trace"):                 # the language and visual targets of Tab. 6
                think = prompts.reasoning(world, phase, chunks[t], rng) if privileged else \
                    prompts.proprio_reasoning(rec["language"], ep["state"][t], chunks[t], scale, rng)
                if kind == "choice":
                    grip = prompts.gripper_words(chunks[t], world.width if privileged else 0.0)
                    signs = prompts.motion_signs(chunks[t], 1.0 if scale is None else scale)
                    options, at = prompts.movement_options(signs, grip, rng)
                    q, target = prompts.choice_prompt(rec["language"], options), prompts.LETTERS[at]
                else:
                    steps = np.minimum(np.arange(t + 1, t + 1 + fast.time_horizon), len(eef) - 1)
                    q, target = prompts.trace_prompt(rec["language"], len(steps)), prompts.trace_text(eef[steps])
                a = f"<think>{think}</think><answer>{target}</answer>"
            else:
                q, a = prompts.fast_prompt(rec["language"]), prompts.fast_answer()
            out.append(Sample(e, t, kind, q, a, list(ids[t]), prompts.motion_signs(chunks[t]).tolist(), target))
    return out


def gripper_path(world: World, sim_states: np.ndarray) -> np.ndarray:
    """[T, 3] the gripper's world position at every step of an episode (the visual target's waypoints)."""
    path = []
    for st in sim_states:
        world.set_state(st)
        path.append(np.array(world.eef_pos, float))
    return np.stack(path)


# ----------------------------------------------------------------------------- reading the other targets back
ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.S)
POINT_RE = re.compile(r"\((-?\d+),\s*(-?\d+)\)")
TRACE_RADIUS = 5.0          # grid units (5 % of the image width) at which a waypoint's error counts in full


def answer_of(text: str) -> str | None:
    """The content of the first <answer>…</answer> block, or None."""
    m = ANSWER_BLOCK.search(text)
    return m.group(1) if m else None


def choice_reward(text: str, letter: str) -> float:
    """Language target: 1.0 iff the first answer block holds exactly the right letter (spaces and a final '.'
    allowed), else 0.0 — no block, another letter, several letters, or anything else. Never raises."""
    a = answer_of(text)
    return float(a is not None and a.strip().rstrip(".").strip() == letter)


def trace_reward(text: str, target: str, radius: float = TRACE_RADIUS) -> float:
    """Visual target: 1 − mean over the target's n waypoints of min(1, distance / radius), in grid units; the
    answer's k-th point is compared with the target's k-th. A missing point costs 1, points beyond n are ignored,
    no answer block or no point scores 0. In [0, 1]; never raises."""
    want = [(int(u), int(v)) for u, v in POINT_RE.findall(target)]
    a = answer_of(text)
    got = [(int(u), int(v)) for u, v in POINT_RE.findall(a)] if a is not None else []
    if not want or not got:
        return 0.0
    err = [min(1.0, float(np.hypot(*np.subtract(got[k], w))) / radius) if k < len(got) else 1.0
           for k, w in enumerate(want)]
    return 1.0 - float(np.mean(err))


TARGET_KINDS = ("choice", "trace")       # kinds whose answer is scored as text against Sample.target


def target_reward(kind: str, text: str, target: str) -> float:
    """The reward of a choice or trace answer: what sft.py evaluates and grpo.py's --reward choice|trace optimise."""
    return choice_reward(text, target) if kind == "choice" else trace_reward(text, target)


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
