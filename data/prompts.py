"""Prompt builders: the text of every sample the MLLM stages train on, built from mini-LIBERO's privileged state.

Three SFT kinds (RoboAlign's Stage 1 mixture, in miniature) plus the scene captions that, with the VQA, stand in
for the paper's pretrained MLLM:
  * caption — "Describe the scene.": where the gripper and every object are in the image and what the gripper
    holds. Dense supervision: every object's place is a token that only the image can give;
  * embodied VQA — where things are in the image (a 3×3 grid of the upright agentview), what the gripper
    holds, left/right and front/back relations, which object an instruction refers to, what to do next,
    which way the gripper should move, drawer/stove states. Answers only the image (or the state) can give.
  * reasoning → FAST — "<think>…</think><answer><ACTION_START>…<ACTION_END></answer>": the reasoning is
    templated from the expert's phase, the target's place in the image and the chunk's motion, with paraphrases.
  * FAST generation — the same prompt without reasoning; the answer is the action tokens only.

Everything here is pure text from (bodies, flat world state, phase, action chunk); the action tokens are
inserted by the caller (sft.py) as the literal string `{ACTIONS}`. Real datasets have no world state: for them
only reasoning → FAST (with `proprio_reasoning`) and FAST generation apply.
"""
from __future__ import annotations

import numpy as np

from data.render import agentview_uv
from data.world import World

REASON_SUFFIX = "First think about the reasoning process, then output the action."
FAST_SUFFIX = "Output the action."
ACTIONS = "{ACTIONS}"                                   # placeholder the caller replaces by FAST tokens
CELLS = [["upper left", "top", "upper right"], ["left", "center", "right"], ["lower left", "bottom", "lower right"]]
AXES = (("right", "left"), ("forward", "backward"), ("up", "down"))   # +x, +y (away from the camera), +z
MOVE_EPS = 0.15                                         # |mean action| below this on an axis counts as no motion


def reasoning_prompt(instruction: str) -> str:
    return f"{instruction}. {REASON_SUFFIX}"


def fast_prompt(instruction: str) -> str:
    return f"{instruction}. {FAST_SUFFIX}"


def fast_answer() -> str:
    return f"<answer><ACTION_START>{ACTIONS}<ACTION_END></answer>"


def label(b) -> str:
    return b.label if b.label.startswith("the ") else "the " + b.label


def image_cell(world: World, i: int) -> str:
    """Which of the 3×3 cells of the upright agentview image body i's centre falls in."""
    b = world.bodies[i]
    u, v = agentview_uv(world.pos[i] + [0.0, 0.0, b.h / 2])[0]
    return CELLS[int(np.clip(v * 3, 0, 2))][int(np.clip(u * 3, 0, 2))]


def gripper_cell(world: World) -> str:
    u, v = agentview_uv(world.eef_pos)[0]
    return CELLS[int(np.clip(v * 3, 0, 2))][int(np.clip(u * 3, 0, 2))]


def motion_signs(chunk: np.ndarray, scale=1.0) -> np.ndarray:
    """[H, 7] actions → 3 ints in {-1, 0, +1}: the chunk's mean translation direction per axis (`scale`: the
    dataset's typical translation size per axis, for datasets whose actions are not in LIBERO's ±1 units)."""
    m = chunk[:, :3].mean(0) / scale
    return np.where(np.abs(m) < MOVE_EPS, 0, np.sign(m)).astype(int)


def direction_words(signs: np.ndarray) -> str:
    words = [AXES[k][0 if s > 0 else 1] for k, s in enumerate(signs) if s != 0]
    if not words:
        return "stay where it is"
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def gripper_words(chunk: np.ndarray, width_now: float) -> str:
    g = chunk[:, 6]
    if g[0] > 0 and width_now > 0.07:
        return "close the gripper"
    if g[0] < 0 < g.max() or (g[0] > 0 and g.min() < 0):
        return "then change the gripper"
    return "keep the gripper closed" if g[0] > 0 else "keep the gripper open"


def focus_body(world: World, phase: str) -> int:
    """The body the expert's current phase is about (the longest body label found in the phase text)."""
    best, n = -1, 0
    for i, b in enumerate(world.bodies):
        lab = label(b)
        if lab in phase and len(lab) > n:
            best, n = i, len(lab)
    if best < 0 and world.held >= 0:
        best = world.held
    return best


def reasoning(world: World, phase: str, chunk: np.ndarray, rng: np.random.Generator) -> str:
    """Short, varied reasoning about the scene and the next motion (the <think> content)."""
    signs = motion_signs(chunk)
    move = direction_words(signs)
    f = focus_body(world, phase)
    holding = f"I am holding {label(world.bodies[world.held])}. " if world.held >= 0 else ""
    # positions on the captions' 10×10 grid: the direction to move follows from the two
    gripper = f"The gripper is at {grid_xy(world.eef_pos)}"
    where = (f"{gripper} and {label(world.bodies[f])} is at "
             f"{grid_xy(world.pos[f] + [0.0, 0.0, world.bodies[f].h / 2])}. ") if f >= 0 else f"{gripper}. "
    step = phase if phase not in ("start", "done") else "finish the task"
    grip = gripper_words(chunk, world.width)
    templates = [      # positions first, then the step, then the motion that follows from them
        f"{where}{holding}Now I should {step}, so I will move {move} and {grip}.",
        f"{where}{holding}The next step is to {step}. I move the gripper {move}.",
        f"{where}{holding}To {step}, the gripper has to go {move}.",
        f"{where}I need to {step}: move {move}, {grip}.",
    ]
    return templates[int(rng.integers(len(templates)))]


def reasoning_answer(world: World, phase: str, chunk: np.ndarray, rng) -> str:
    return f"<think>{reasoning(world, phase, chunk, rng)}</think>{fast_answer()}"


def motion_scale(stats: dict) -> np.ndarray:
    """Per translation axis, the larger of |q01| and |q99| of the dataset's actions: motion words then mean the
    same on LIBERO (≈ ±1 units) and BridgeV2 (metres per step)."""
    a = stats["actions"]
    return np.maximum(np.maximum(np.abs(a["q01"][:3]), np.abs(a["q99"][:3])), 1e-6)


def proprio_reasoning(instruction: str, state: np.ndarray, chunk: np.ndarray, scale, rng) -> str:
    """The <think> content for datasets without privileged state (LIBERO HDF5, LeRobot, BridgeV2): built only from
    what they record: the instruction, the end-effector position (proprio, dataset units) and the motion words
    of the action chunk that follows. No object positions or phases: the model must read those from the image."""
    signs = motion_signs(chunk, scale)
    move = f"move {direction_words(signs)}" if signs.any() else "stay where I am"
    grip = gripper_words(chunk, 0.0)
    where = "The gripper is at ({:+.2f}, {:+.2f}, {:+.2f}). ".format(*state[:3])
    templates = [
        f"{where}To {instruction}, I will {move} and {grip}.",
        f"{where}The task is to {instruction}. Next I {move}.",
        f"{where}I need to {instruction}: {move}, {grip}.",
    ]
    return templates[int(rng.integers(len(templates)))]


def proprio_answer(instruction: str, state: np.ndarray, chunk: np.ndarray, scale, rng) -> str:
    return f"<think>{proprio_reasoning(instruction, state, chunk, scale, rng)}</think>{fast_answer()}"


def grid_xy(point: np.ndarray, n: int = 10) -> str:
    """'(column, row)' of a world point on an n×n grid over the upright agentview image."""
    u, v = np.clip((agentview_uv(point)[0] * n).astype(int), 0, n - 1)
    return f"({u}, {v})"


def caption(world: World) -> tuple[str, str]:
    """The whole scene, object by object (scene order), gripper first, on a 10×10 image grid: finer than the
    3×3 words of the VQA, because actions need positions to a few centimetres."""
    parts = [f"The gripper is at {grid_xy(world.eef_pos)}"]
    if world.held >= 0:
        parts[0] += f" holding {label(world.bodies[world.held])}"
    for i, b in enumerate(world.bodies):
        if b.fixture in ("drawer", "knob") or i == world.held:
            continue
        parts.append(f"{label(b)} is at {grid_xy(world.pos[i] + [0.0, 0.0, b.h / 2])}")
    return "Describe the scene.", ". ".join(p[0].upper() + p[1:] for p in parts) + "."


def vqa(world: World, instruction: str, plan: list, phase: str, chunk: np.ndarray, rng) -> tuple[str, str]:
    """One embodied question and its answer about this frame."""
    bodies = [i for i, b in enumerate(world.bodies) if b.fixture not in ("drawer", "knob") and world.support[i] != -2]
    i = int(rng.choice(bodies))
    kind = int(rng.integers(9))
    if kind <= 2:                                                        # locate (most frequent: grounding)
        q = rng.choice(["Where is {x} in the image?", "In which part of the image is {x}?", "Locate {x}."])
        return q.format(x=label(world.bodies[i])), f"{label(world.bodies[i]).capitalize()} is in the {image_cell(world, i)} of the image."
    if kind == 3:
        q = "What is the gripper holding?"
        return q, (f"The gripper is holding {label(world.bodies[world.held])}." if world.held >= 0 else "The gripper is empty.")
    if kind == 4:                                                        # relations seen from the camera
        j = int(rng.choice([k for k in bodies if k != i] or [i]))
        a, b = label(world.bodies[i]), label(world.bodies[j])
        if rng.random() < 0.5:
            side = "left" if world.pos[i, 0] < world.pos[j, 0] else "right"
            return f"Is {a} to the left or to the right of {b}?", f"{a.capitalize()} is to the {side} of {b}."
        side = "behind" if world.pos[i, 1] > world.pos[j, 1] else "in front of"
        return f"Is {a} in front of or behind {b}?", f"{a.capitalize()} is {side} {b}."
    if kind == 5:
        target = world.index.get(plan[0][1], -1) if plan else -1
        if target >= 0:
            return (f"Which object does the instruction \"{instruction}\" refer to first?",
                    f"It refers to {label(world.bodies[target])}, in the {image_cell(world, target)} of the image.")
    if kind == 6:
        return f"The task is to {instruction}. What should the robot do now?", f"It should {phase if phase not in ('start', 'done') else 'finish the task'}."
    if kind == 7:
        return "In which direction should the gripper move next?", f"It should move {direction_words(motion_signs(chunk))}."
    return "Where is the gripper in the image?", f"The gripper is in the {gripper_cell(world)} of the image."


# ----------------------------------------------------------------------------- the other RL targets (paper Tab. 6)
# RoboAlign compares aligning on FAST tokens with aligning on two other targets for the same next chunk: a
# multiple-choice question about the movement (language) and the gripper's 2-D path in the image (visual). Both
# answers follow the same <think>…</think><answer>…</answer> format, so the format reward is the same for all three.
LETTERS = "ABCD"
GRIP_PHRASES = ("close the gripper", "then change the gripper", "keep the gripper closed", "keep the gripper open")
TRACE_GRID = 100            # waypoints as integer (column, row) on a 100×100 grid over the upright agentview image


def movement_options(signs: np.ndarray, grip: str, rng) -> tuple[list[str], int]:
    """Four distinct descriptions of the next chunk's movement and the index of the true one. Two distractors
    change what one axis does (a moving axis reversed or stopped, a still one set moving), one keeps the motion and
    changes the gripper phrase: each is wrong in exactly one respect, so the question needs the whole answer."""
    truth = f"move {direction_words(signs)}, {grip}"
    near = [signs.copy() for _ in range(6)]
    for n, (k, d) in enumerate([(k, d) for k in range(3) for d in (1, 2)]):
        near[n][k] = (signs[k] + 1 + d) % 3 - 1                     # the two other values of axis k
    picks = rng.permutation(6)[:2]
    options = [f"move {direction_words(near[i])}, {grip}" for i in picks]
    other = [g for g in GRIP_PHRASES if g != grip]
    options.append(f"move {direction_words(signs)}, {other[int(rng.integers(len(other)))]}")
    at = int(rng.integers(4))
    options.insert(at, truth)
    return options, at


def choice_prompt(instruction: str, options: list[str]) -> str:
    lines = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
    return (f"The task is to {instruction}. What should the robot do next?\n{lines}\n"
            "First think about the reasoning process, then answer with the letter.")


def trace_prompt(instruction: str, n: int) -> str:
    return (f"The task is to {instruction}. Where will the gripper be in the image over the next {n} steps? "
            f"First think about the reasoning process, then answer with {n} points (column, row) on a "
            f"{TRACE_GRID}×{TRACE_GRID} grid.")


def trace_text(points: np.ndarray) -> str:
    """[n, 3] world points → '(c, r) (c, r) …' on the TRACE_GRID grid of the upright agentview image."""
    uv = np.clip((agentview_uv(points) * TRACE_GRID).astype(int), 0, TRACE_GRID - 1)
    return " ".join(f"({u}, {v})" for u, v in uv)
