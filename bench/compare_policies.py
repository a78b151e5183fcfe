"""Where do two policies part? Drive one closed-loop and ask the other for its chunk on the same observation.

A closed-loop failure is a compounding error or a perception error, and success rates cannot tell which. Here
policy A (`--drive`) runs an episode of mini-LIBERO with eval_libero.py's protocol (init state, 10 settle steps,
the first --replan-steps actions of each chunk executed); at every replanning step policy B (`--probe`) is asked
for its chunk on the very same observation, with the same diffusion noise seed. Printed per call: the end-effector
position, both chunks' mean translation over the executed steps, and both gripper commands; calls where they
differ by more than --min-diff are shown. If B agrees with A on A's own trajectory but fails on its own, B's
failure is one of states A never visits.

    python bench/compare_policies.py --drive out/calibration/libero/head-vla-sft \\
        --probe out/calibration/libero/head-blind --suite object --task 1 --inits 12,13,14
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from config import arg, parse_config  # noqa: E402
from eval_libero import SETTLE_ACTION, MiniBackend, policy_inputs  # noqa: E402
from eval_libero import Config as EvalConfig  # noqa: E402
from vla_train import Policy  # noqa: E402


@dataclass
class Config:
    drive: str = arg("out/vla", "VLA checkpoint that acts (vla_train.py --out)")
    probe: str = arg("out/vla_blind", "VLA checkpoint asked on the same observations")
    suite: str = arg("object", "spatial | object | goal | long")
    task: int = arg(0, "task index within the suite")
    inits: str = arg("0", "comma list of init states")
    layout: str = arg("libero", "mini-LIBERO layout")
    replan_steps: int = arg(5, "actions executed per chunk")
    max_steps: int = arg(0, "policy steps per episode (0: the suite's LIBERO limit)")
    min_diff: float = arg(0.08, "show calls whose mean translation differs by more than this (0: all)")


def first_actions(policy, obs, instruction: str, n: int, seed: int) -> np.ndarray:
    img, wrist, proprio = policy_inputs(obs, policy.image_size)
    return policy([img], [wrist], [proprio], [instruction], generator=torch.Generator().manual_seed(seed))[0][:n]


def main(cfg: Config) -> None:
    drive, probe = Policy.load(cfg.drive), Policy.load(cfg.probe)
    if drive.episodic or probe.episodic:
        raise SystemExit("compare_policies.py: oracle policies read the env directly; compare image or blind heads")
    backend = MiniBackend(cfg.layout)
    instruction = backend.instruction(cfg.suite, cfg.task)
    limit = cfg.max_steps or backend.max_steps[cfg.suite]
    for init in (int(i) for i in cfg.inits.split(",")):
        env = backend.make_env(cfg.suite, cfg.task, drive.image_size, seed=7)
        env.reset()
        obs = env.set_init_state(backend.init_states(cfg.suite, cfg.task)[init])
        for _ in range(EvalConfig.settle_steps):                 # settle with the gripper open, as the protocol
            obs, *_ = env.step(SETTLE_ACTION)
        lines, done, t = [], False, 0
        while t < limit and not done:
            a = first_actions(drive, obs, instruction, cfg.replan_steps, t)     # [n, 7] env actions
            b = first_actions(probe, obs, instruction, cfg.replan_steps, t)
            ma, mb = a[:, :3].mean(0), b[:, :3].mean(0)
            if np.abs(ma - mb).max() > cfg.min_diff or (a[:, 6] != b[:, 6]).any():
                lines.append(f"t {t:3d} eef {np.round(obs['robot0_eef_pos'], 3)} drive {ma.round(2)} probe "
                             f"{mb.round(2)} grip {a[:, 6].astype(int)} / {b[:, 6].astype(int)}")
            for step in a[:limit - t]:
                obs, _, done, _ = env.step(step)
                t += 1
                if done:
                    break
        print(f"{cfg.suite} task {cfg.task} init {init}: {'success' if done else 'failure'} after {t} steps "
              f"({len(lines)} calls differ)")
        print("\n".join("  " + s for s in lines))


if __name__ == "__main__":
    main(parse_config(Config, doc=__doc__))
