"""mini-LIBERO physics: bodies on a table, a floating Panda-like end-effector, grasp / carry / release.

The world is deliberately simple but consistent (kinematic, not dynamic):

* Units are metres and radians. The table top is z = 0; x points right and y away from the front camera.
* The robot is an end-effector (eef) with a position (the point between the fingertips), an orientation
  quaternion (xyzw, pointing down at rest, like LIBERO's Panda) and a two-finger gripper whose opening
  `width` lies in [0, 0.08]. `robot0_gripper_qpos` = (width/2, -width/2), as the Panda's two finger joints.
* An action is LIBERO's 7-D OSC_POSE delta, every entry in [-1, 1] (clipped; NaN rejected):
  Δxyz · POS_SCALE metres, Δaxis-angle · ROT_SCALE radians (applied in the world frame), and the gripper
  command whose *sign* moves the fingers (−1 open, +1 close, 0 hold), as robosuite's Panda gripper does.
* Every body rests on a support: the table (-1) or another body (a plate, a bowl, a basket, a drawer, the
  cabinet top …). Moving a body moves everything resting on it (a bowl in an opening drawer moves with it).
* Grasp: while the fingers close, the nearest graspable body whose centre lies between them (horizontal
  distance ≤ GRASP_TOL, eef height within the body's height) stops them at its grasp width and is held; a
  held body follows the eef (translation and yaw). Opening past the grasp width releases it and it drops
  onto the highest surface under its centre. Fixtures work the same way: a closed gripper on a drawer
  handle moves the drawer along its rail; on a stove knob, the eef's yaw turns the knob.
* Nothing passes through the table: the eef (and what it carries) stays above it. Bodies are not obstacles
  to each other or to the eef (a documented simplification).

The whole dynamic state is one flat float64 vector (`World.get_state` / `set_state`), like MuJoCo's
flattened sim state that LIBERO's init states hold; the bodies themselves (kinds, colours, sizes) are fixed
by the task's scene.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

CONTROL_HZ = 20            # LIBERO's control frequency
POS_SCALE = 0.015          # metres per unit action per step (a = 1 → 0.30 m/s)
ROT_SCALE = 0.15           # radians per unit action per step
GRIPPER_SPEED = 0.016      # metres of finger opening per step (a full close takes 5 steps)
MAX_WIDTH = 0.08           # Panda's maximum finger opening
GRASP_TOL = 0.022          # horizontal distance (m) between eef and body centre that still grasps
EEF_MIN_Z = 0.004          # fingertips stop just above the table
WORKSPACE = np.array([[-0.36, 0.36], [-0.30, 0.40], [EEF_MIN_Z, 0.45]])
REST_QUAT = np.array([1.0, 0.0, 0.0, 0.0])   # xyzw: gripper pointing down (π about x), as LIBERO's Panda


# ----------------------------------------------------------------------------- quaternion helpers (xyzw)
def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array([aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw,
                     aw * bw - ax * bx - ay * by - az * bz])


def axisangle_to_quat(v: np.ndarray) -> np.ndarray:
    angle = float(np.linalg.norm(v))
    if angle < 1e-12:
        return np.array([0.0, 0.0, 0.0, 1.0])
    axis = v / angle
    return np.concatenate([axis * math.sin(angle / 2), [math.cos(angle / 2)]])


def quat_to_axisangle(q: np.ndarray) -> np.ndarray:
    """The same conversion LIBERO's evaluation scripts use for the 8-D proprio (robosuite quat2axisangle)."""
    w = float(np.clip(q[3], -1.0, 1.0))
    den = math.sqrt(max(1.0 - w * w, 0.0))
    if den < 1e-10:
        return np.zeros(3)
    return q[:3] * 2.0 * math.acos(w) / den


def quat_yaw(q: np.ndarray) -> float:
    """Heading of the gripper about world z: the angle of its local x axis projected on the table."""
    x, y, z, w = q
    xx = 1 - 2 * (y * y + z * z)          # first column of the rotation matrix
    xy = 2 * (x * y + z * w)
    return math.atan2(xy, xx)


# ----------------------------------------------------------------------------- bodies
@dataclass
class Body:
    """A rigid body of the scene. Geometry is an upright box (half extents sx, sy) or cylinder (radius sx)."""
    name: str                    # unique within the scene, e.g. "black_bowl_1"
    kind: str                    # bowl, plate, mug, box, bottle, can, basket, cabinet, drawer, stove, knob, …
    color: str                   # colour name used in language ("black", "red", …)
    shape: str                   # "box" or "cyl" (rendering adds kind-specific details)
    sx: float                    # half extent in x (box) or radius (cyl)
    sy: float                    # half extent in y (box); = sx for cylinders
    h: float                     # height
    graspable: bool = False
    grasp_width: float = 0.0     # finger opening when this body is held
    floor: float | None = None   # height above the base that supported bodies rest at (None: supports nothing)
    container: bool = False      # supported bodies are "in" it (basket, bowl, drawer) rather than "on" it
    inner: float = 1.0           # fraction of the footprint that counts as its surface
    fixture: str = ""            # "drawer" / "knob": moved by grasping it; "" for free bodies; "static" never moves
    parent: int = -1             # drawer → its cabinet, knob → its stove
    rail: tuple = (0.0, 0.0)     # joint range: drawer opening (m) or knob angle (rad)
    label: str = ""              # the phrase the instructions use, e.g. "the top drawer of the wooden cabinet"

    def contains_xy(self, x: float, y: float, cx: float, cy: float) -> bool:
        if self.shape == "cyl":
            return (x - cx) ** 2 + (y - cy) ** 2 <= (self.sx * self.inner) ** 2
        return abs(x - cx) <= self.sx * self.inner and abs(y - cy) <= self.sy * self.inner


@dataclass
class World:
    """Dynamic state of one scene plus the step function. `bodies` never change after construction."""
    bodies: list[Body]
    pos: np.ndarray = None        # [N, 3] base centre of every body
    yaw: np.ndarray = None        # [N]
    support: np.ndarray = None    # [N] int, index of the body each rests on, -1 = table
    joint: np.ndarray = None      # [N] drawer opening / knob angle (0 for others)
    eef_pos: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 0.25]))
    eef_quat: np.ndarray = field(default_factory=lambda: REST_QUAT.copy())
    width: float = MAX_WIDTH
    held: int = -1                # body held by the gripper, -1 = none
    grip_dir: float = -1.0        # last non-zero gripper command (−1 opening, +1 closing)

    def __post_init__(self):
        n = len(self.bodies)
        self.pos = np.zeros((n, 3)) if self.pos is None else self.pos
        self.yaw = np.zeros(n) if self.yaw is None else self.yaw
        self.support = -np.ones(n, dtype=int) if self.support is None else self.support
        self.joint = np.zeros(n) if self.joint is None else self.joint
        self.index = {b.name: i for i, b in enumerate(self.bodies)}

    # --------------------------------------------------------------------- flat state, LIBERO-style
    def state_size(self) -> int:
        return 3 + 4 + 3 + 6 * len(self.bodies)

    def get_state(self) -> np.ndarray:
        head = np.concatenate([self.eef_pos, self.eef_quat, [self.width, self.held, self.grip_dir]])
        per = np.concatenate([self.pos, self.yaw[:, None], self.support[:, None], self.joint[:, None]], axis=1)
        return np.concatenate([head, per.ravel()]).astype(np.float64)

    def set_state(self, s: np.ndarray) -> None:
        s = np.asarray(s, dtype=np.float64)
        if s.shape != (self.state_size(),):
            raise ValueError(f"expected a flat state of shape ({self.state_size()},), got {s.shape}")
        self.eef_pos, self.eef_quat = s[0:3].copy(), s[3:7].copy()
        self.width, self.held, self.grip_dir = float(s[7]), int(s[8]), float(s[9])
        per = s[10:].reshape(len(self.bodies), 6)
        self.pos, self.yaw = per[:, :3].copy(), per[:, 3].copy()
        self.support, self.joint = per[:, 4].astype(int), per[:, 5].copy()

    # --------------------------------------------------------------------- geometry queries
    def surface_z(self, i: int) -> float:
        b = self.bodies[i]
        return self.pos[i, 2] + (b.floor if b.floor is not None else b.h)

    def dependents(self, i: int) -> list[int]:
        """Bodies resting (directly or not) on body i, including drawers/knobs attached to it."""
        out, stack = [], [i]
        while stack:
            k = stack.pop()
            for j in range(len(self.bodies)):
                if j != i and j not in out and (self.support[j] == k or self.bodies[j].parent == k):
                    out.append(j)
                    stack.append(j)
        return out

    def move_body(self, i: int, delta: np.ndarray, dyaw: float = 0.0, pivot: np.ndarray | None = None) -> None:
        """Translate body i by delta (and rotate by dyaw about pivot), carrying everything that rests on it."""
        group = [i] + self.dependents(i)
        for j in group:
            if dyaw and pivot is not None:
                c, s = math.cos(dyaw), math.sin(dyaw)
                rel = self.pos[j, :2] - pivot[:2]
                self.pos[j, :2] = pivot[:2] + np.array([c * rel[0] - s * rel[1], s * rel[0] + c * rel[1]])
                self.yaw[j] += dyaw
            self.pos[j] += delta

    def surface_under(self, x: float, y: float, below_z: float, exclude: set[int]) -> tuple[int, float]:
        """The highest surface under (x, y) not above below_z: (body index or -1 for the table, height)."""
        best, best_z = -1, 0.0
        for i, b in enumerate(self.bodies):
            if b.floor is None or i in exclude:
                continue
            if not b.contains_xy(x, y, self.pos[i, 0], self.pos[i, 1]):
                continue
            if b.fixture == "drawer" and not self.drawer_reachable(i, y):
                continue
            z = self.surface_z(i)
            if z <= below_z + 1e-6 and z > best_z:
                best, best_z = i, z
        return best, best_z

    def drawer_reachable(self, i: int, y: float) -> bool:
        """Only the part of a drawer pulled out of its cabinet can receive objects."""
        cab = self.bodies[i].parent
        return y < self.pos[cab, 1] - self.bodies[cab].sy

    def handle_pos(self, i: int) -> np.ndarray:
        """Grasp point of a fixture: the front handle of a drawer, the top of a knob."""
        b = self.bodies[i]
        if b.fixture == "drawer":
            return self.pos[i] + np.array([0.0, -b.sy - 0.012, b.h * 0.6])
        return self.pos[i] + np.array([0.0, 0.0, b.h * 0.5])

    # --------------------------------------------------------------------- one control step
    def step(self, action: np.ndarray) -> None:
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (7,):
            raise ValueError(f"expected a 7-D action (dxyz, daxis-angle, gripper), got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action contains NaN or inf: {a.tolist()}")
        a = np.clip(a, -1.0, 1.0)
        dpos, drot, grip = a[:3] * POS_SCALE, a[3:6] * ROT_SCALE, a[6]

        old_yaw = quat_yaw(self.eef_quat)
        self.eef_quat = quat_mul(axisangle_to_quat(drot), self.eef_quat)
        self.eef_quat /= np.linalg.norm(self.eef_quat)
        dyaw = _wrap(quat_yaw(self.eef_quat) - old_yaw)

        held = self.bodies[self.held] if self.held >= 0 else None
        if held is not None and held.fixture == "drawer":
            self._pull_drawer(self.held, dpos[1])
        elif held is not None and held.fixture == "knob":
            self._turn_knob(self.held, dyaw)
        else:
            self._move_eef(dpos, dyaw)
        self._actuate_gripper(grip)

    def _move_eef(self, dpos: np.ndarray, dyaw: float) -> None:
        target = np.clip(self.eef_pos + dpos, WORKSPACE[:, 0], WORKSPACE[:, 1])
        if self.held >= 0:   # what we carry must stay above the table too
            bottom = self.pos[self.held, 2] - self.eef_pos[2]      # held body's base relative to the eef
            target[2] = max(target[2], -bottom + 1e-4)
            self.move_body(self.held, target - self.eef_pos, dyaw, pivot=self.eef_pos)
        self.eef_pos = target

    def _pull_drawer(self, i: int, dy: float) -> None:
        lo, hi = self.bodies[i].rail
        new = float(np.clip(self.joint[i] - dy, lo, hi))       # pulling towards the camera (−y) opens it
        self.move_body(i, np.array([0.0, -(new - self.joint[i]), 0.0]))
        self.joint[i] = new
        self.eef_pos = self.handle_pos(i)                      # the hand rides on the handle

    def _turn_knob(self, i: int, dyaw: float) -> None:
        lo, hi = self.bodies[i].rail
        self.joint[i] = float(np.clip(self.joint[i] + dyaw, lo, hi))
        self.yaw[i] = self.joint[i]

    def _actuate_gripper(self, grip: float) -> None:
        if grip == 0.0:
            return
        self.grip_dir = float(np.sign(grip))
        if grip > 0:                                            # closing
            if self.held >= 0:
                return                                          # blocked by what it holds
            new = max(self.width - GRIPPER_SPEED, 0.0)
            j = self._graspable_between_fingers()
            if j >= 0 and new <= self.bodies[j].grasp_width:
                self.width, self.held = self.bodies[j].grasp_width, j
                if self.bodies[j].fixture == "":
                    self.support[j] = -2                        # -2: in the hand
            else:
                self.width = new
        else:                                                   # opening
            self.width = min(self.width + GRIPPER_SPEED, MAX_WIDTH)
            if self.held >= 0 and self.width > self.bodies[self.held].grasp_width + 0.004:
                self._release()

    def _graspable_between_fingers(self) -> int:
        best, best_d = -1, GRASP_TOL
        for j, b in enumerate(self.bodies):
            if not b.graspable or self.width < b.grasp_width:
                continue                                        # fingers already narrower than the body
            p = self.handle_pos(j) if b.fixture in ("drawer", "knob") else self.pos[j]
            d = math.hypot(self.eef_pos[0] - p[0], self.eef_pos[1] - p[1])
            lo, hi = (p[2] - 0.02, p[2] + 0.02) if b.fixture else (p[2] + 0.003, p[2] + b.h + 0.005)
            if d <= best_d and lo <= self.eef_pos[2] <= hi:
                best, best_d = j, d
        return best

    def _release(self) -> None:
        j, self.held = self.held, -1
        if self.bodies[j].fixture:
            return
        x, y, z = self.pos[j]
        exclude = {j, *self.dependents(j)}
        k, zs = self.surface_under(x, y, z + 0.03, exclude)    # 3 cm of slack: lowering into a container
        self.support[j] = k
        self.move_body(j, np.array([0.0, 0.0, zs - z]))

    # --------------------------------------------------------------------- observations
    def proprio(self) -> np.ndarray:
        """LIBERO's 8-D proprio: eef pos (3) + axis-angle of eef quat (3) + gripper qpos (2)."""
        return np.concatenate([self.eef_pos, quat_to_axisangle(self.eef_quat),
                               [self.width / 2, -self.width / 2]]).astype(np.float32)


def _wrap(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi
