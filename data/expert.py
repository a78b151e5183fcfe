"""The scripted mini-LIBERO expert: closed-loop waypoint plans from privileged state, with human-like variation.

A task's plan is a list of primitives (`pick_place`, `place_beside`, `open`, `close`, `turn_on`). Each is a
generator of 7-D actions that re-reads the world every step (closed loop), so noise never accumulates.
Variation per episode ("style"): approach and travel heights, a resting yaw of the hand (re-gripped between
primitives) and grasp offsets, so that demonstrations of one task differ the way teleoperation does. Every one
of these shows in the images (the hand's height, its yaw, where it grasps), so one frame determines the next
action chunk. What a frame cannot show is left out on purpose: operator speed, pauses and hand tremor made the
next chunk's FAST tokens unpredictable even from the privileged state (a 1-NN on the full world state matched
6 % of first tokens with them, 21 % without, bench/fast_predictability.py; `noise=True` gives that harder, human-like
variant). The tiny backbone has to learn actions from pixels; there is no point asking it for a coin flip.

Each yielded action comes with a short phase name ("approach the black bowl", "grasp", …); demos store it
and later stages turn it into reasoning text.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from data.world import POS_SCALE, REST_QUAT, ROT_SCALE, World, quat_mul, quat_to_axisangle, quat_yaw

OPEN, CLOSE = -1.0, 1.0


def yaw_quat(yaw: float) -> np.ndarray:
    return quat_mul(np.array([0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)]), REST_QUAT)


def rotation_error(q_target: np.ndarray, q: np.ndarray) -> np.ndarray:
    """World-frame axis-angle taking q to q_target (shortest way)."""
    conj = np.array([-q[0], -q[1], -q[2], q[3]])
    e = quat_mul(q_target, conj)
    return quat_to_axisangle(-e if e[3] < 0 else e)


class Expert:
    """`act(world)` returns the next action and its phase; `done` once the plan is exhausted."""

    def __init__(self, world: World, plan: list, rng: np.random.Generator, style: bool = True, noise: bool = False):
        """style: per-episode variation that the images show; noise: also the variation they cannot show."""
        self.w, self.rng, self.style, self.noise = world, rng, style, noise
        u = rng.uniform if style else (lambda a, b: (a + b) / 2)
        self.approach = u(0.05, 0.10)              # height above the grasp point before descending
        self.travel = u(0.13, 0.17)                # carrying height
        self.rest_yaw = u(-0.3, 0.3)               # how this "operator" holds the hand
        self.speed = rng.uniform(0.7, 1.0) if noise else 0.85    # max |action| on translation
        self.pause_p = rng.uniform(0.0, 0.4) if noise else 0.0   # chance of a short pause after a phase
        self.sigma = 0.05 if noise else 0.0        # action noise (translation)
        self._drift = np.zeros(3)
        self.grip = OPEN
        self.phase = "start"
        self.done = False
        self._gen = self._run(plan)

    def act(self, world: World | None = None) -> tuple[np.ndarray, str]:
        if world is not None:
            self.w = world
        try:
            a = next(self._gen)
        except StopIteration:
            self.done = True
            a = self._action(np.zeros(3))
        return a, self.phase

    # --------------------------------------------------------------------- low-level control
    def _action(self, dpos_cmd: np.ndarray, yaw: float | None = None, rot_gain: float = 0.5) -> np.ndarray:
        q_t = yaw_quat(self.rest_yaw if yaw is None else yaw)
        rot = np.clip(rotation_error(q_t, self.w.eef_quat) / ROT_SCALE * rot_gain, -0.6, 0.6)
        rot[:2] = 0.0               # the expert only ever turns the wrist about z (the hand stays level)
        if self.sigma:   # smooth (AR(1)) noise on translation, as a hand drifts; none on rotation
            self._drift = 0.8 * self._drift + 0.6 * self.rng.normal(0.0, self.sigma, 3)
            dpos_cmd = dpos_cmd + self._drift
        return np.clip(np.concatenate([dpos_cmd, rot, [self.grip]]), -1.0, 1.0)

    def _move(self, target, tol=0.006, speed=None, max_steps=120, **kw) -> Iterator[np.ndarray]:
        vmax = self.speed if speed is None else speed
        for _ in range(max_steps):
            err = np.asarray(target(), float) - self.w.eef_pos if callable(target) else np.asarray(target) - self.w.eef_pos
            if np.linalg.norm(err) < tol:
                return
            yield self._action(self._command(err, vmax), **kw)

    def _command(self, err: np.ndarray, vmax: float) -> np.ndarray:
        """Translation command for the remaining error err [3] (metres): P-control with gain 1 (it would arrive in
        one step), along a straight line, scaled so the largest axis is at most vmax. Subclasses change the law
        (bench/fast_predictability.py --controller)."""
        cmd = err / POS_SCALE
        n = np.abs(cmd).max()
        return cmd * min(1.0, vmax / n) if n > 0 else cmd

    def _hold(self, n: int, **kw) -> Iterator[np.ndarray]:
        for _ in range(n):
            yield self._action(np.zeros(3), **kw)

    def _maybe_pause(self):
        if self.noise and self.rng.random() < self.pause_p:
            yield from self._hold(int(self.rng.integers(1, 5)))

    def _set_grip(self, g: float, until, max_steps=10, **kw):
        self.grip = g
        for _ in range(max_steps):
            if until():
                break
            yield self._action(np.zeros(3), **kw)
        yield from self._hold(int(self.rng.integers(1, 3)) if self.style else 1, **kw)

    # --------------------------------------------------------------------- primitives
    def _run(self, plan):
        for step in plan:
            if self.style:                       # the operator re-grips the hand between primitives
                self.rest_yaw = float(self.rng.uniform(-0.35, 0.35))
            yield from getattr(self, "_" + step[0])(*step[1:])
        self.phase = "done"

    def _pick(self, name: str):
        w, i = self.w, self.w.index[name]
        b = w.bodies[i]
        jitter = self.rng.uniform(-0.005, 0.005, 2) if self.style else np.zeros(2)
        grasp = lambda: w.pos[i] + np.array([jitter[0], jitter[1], min(0.6 * b.h, 0.036)])
        label = b.label if b.label.startswith("the ") else "the " + b.label
        self.phase = f"move above {label}"
        yield from self._move(lambda: grasp() + [0, 0, max(self.approach, self.travel - grasp()[2])])
        yield from self._maybe_pause()
        self.phase = f"lower the gripper to {label}"
        yield from self._move(grasp, tol=0.004, speed=min(self.speed, 0.6))
        self.phase = f"grasp {label}"
        yield from self._set_grip(CLOSE, lambda: w.held == i)
        self.phase = f"lift {label}"
        yield from self._move(lambda: np.array([w.eef_pos[0], w.eef_pos[1], self.travel]), tol=0.01)

    def _place_at(self, name: str, point_xy, surface_z: float, label: str):
        w, i = self.w, self.w.index[name]
        above = lambda: np.array([point_xy[0], point_xy[1], max(self.travel, surface_z + 0.1)])
        self.phase = f"carry it to {label}"
        yield from self._move(above)
        yield from self._maybe_pause()
        self.phase = f"lower it onto {label}"
        offset = lambda: w.eef_pos[2] - w.pos[i, 2]                       # eef height above the body's base
        yield from self._move(lambda: np.array([point_xy[0], point_xy[1], surface_z + 0.012 + offset()]),
                              tol=0.005, speed=min(self.speed, 0.6))
        self.phase = "release"
        yield from self._set_grip(OPEN, lambda: w.held != i)
        self.phase = "move the gripper up"
        yield from self._move(w.eef_pos + [0, 0, self.approach], tol=0.01)

    def _pick_place(self, name: str, target: str, offset=(0.0, 0.0)):
        yield from self._pick(name)
        w, j = self.w, self.w.index[target]
        tb = w.bodies[j]
        xy = w.pos[j, :2] + np.asarray(offset)
        if tb.fixture == "drawer":                  # aim at the part of the drawer that sticks out
            cab = tb.parent
            front = w.pos[cab, 1] - w.bodies[cab].sy
            xy = np.array([w.pos[j, 0], (front + w.pos[j, 1] - tb.sy) / 2])
        label = tb.label if tb.label.startswith("the ") else "the " + tb.label
        yield from self._place_at(name, xy, w.surface_z(j), label)

    def _place_beside(self, name: str, ref: str, offset):
        yield from self._pick(name)
        w, j = self.w, self.w.index[ref]
        label = f"the right of {w.bodies[j].label}"
        yield from self._place_at(name, w.pos[j, :2] + np.asarray(offset), 0.0, label)

    def _grab_fixture(self, name: str, what: str, front: float):
        w, i = self.w, self.w.index[name]
        h = lambda: w.handle_pos(i)
        self.phase = f"move to {what}"
        yield from self._move(lambda: h() + [0, -front, 0.07])
        yield from self._move(lambda: h() + [0, -front, 0.0], tol=0.008)
        yield from self._move(h, tol=0.004, speed=min(self.speed, 0.5))
        self.phase = f"grasp {what}"
        yield from self._set_grip(CLOSE, lambda: w.held == i)

    def _let_go(self, up: float):
        w = self.w
        self.phase = "release"
        yield from self._set_grip(OPEN, lambda: w.held < 0)
        self.phase = "move the gripper away"
        yield from self._move(w.eef_pos + [0, -0.03, up], tol=0.01)

    def _open(self, name: str, close: bool = False):
        w, i = self.w, self.w.index[name]
        what = w.bodies[i].label
        yield from self._grab_fixture(name, "the handle of " + what, front=0.05)
        lo, hi = w.bodies[i].rail
        goal = lo + 0.002 if close else hi - 0.004
        self.phase = ("push " if close else "pull ") + what + (" closed" if close else " open")
        for _ in range(80):                          # the hand rides on the handle; only y moves the drawer
            if (w.joint[i] <= goal) if close else (w.joint[i] >= goal):
                break
            dy = (w.joint[i] - goal)                 # pulling (−y) opens
            yield self._action(np.array([0.0, np.clip(dy / POS_SCALE, -self.speed, self.speed), 0.0]))
        yield from self._let_go(0.06)

    def _close(self, name: str):
        yield from self._open(name, close=True)

    def _turn_on(self, name: str):
        w, i = self.w, self.w.index[name]
        what = w.bodies[i].label
        h = lambda: w.handle_pos(i)
        self.phase = f"move above {what}"
        yield from self._move(lambda: h() + [0, 0, self.approach])
        self.phase = f"lower the gripper to {what}"
        yield from self._move(h, tol=0.004, speed=min(self.speed, 0.5))
        self.phase = f"grasp {what}"
        yield from self._set_grip(CLOSE, lambda: w.held == i)
        self.phase = f"turn {what}"
        goal = quat_yaw(w.eef_quat) + 0.95
        for _ in range(40):
            if w.joint[i] >= 0.85:
                break
            yield self._action(np.zeros(3), yaw=goal, rot_gain=0.8)
        yield from self._let_go(0.07)
