"""mini-LIBERO scenes and tasks: four suites × 10 tasks shaped like LIBERO's, 50 fixed initial states each.

A task is a scene (the list of bodies, fixed for the task), a layout sampler (where things start; one
deterministic sample per init-state index), an instruction in LIBERO's wording, a success predicate and
the expert's plan (a list of primitives). Where mini-LIBERO cannot reproduce a LIBERO task with its
kinematics (pushing, microwave doors) the task is replaced by the nearest one it can, marked `# ≠ LIBERO`.

Layouts (where things start), one name wherever scenes are made:
- `libero` (the default): LIBERO's own regime. Each suite has canonical scene(s) as LIBERO has them —
  spatial: one scene for all ten tasks, only the two bowls' start spots change per task; object: one floor
  scene with a basket, the task picks which groceries stand on its spots; goal: literally one scene for all
  ten tasks; long: a few scene families. Every free body is then jittered uniformly by the spread LIBERO's
  own 50 init states per task show (measured as max − min over them, halved): ±1.5 cm in spatial and goal
  (bowls on the stove or cabinet top ±3 cm, one goal object ±2 cm), ±0.5 cm for libero_object's target
  (basket ±1.5, other groceries ±1), ±2.5 cm in libero_10 (basket ±1). Fixtures (cabinet, stove) stay put.
- `libero-x2`, `libero-x3` (any `libero-x<k>`): the same draws with every spread scaled by k, for
  calibration: where between LIBERO's regime and the wide one a policy starts to need its camera.
- `wide`: every free body anywhere in a ~50 × 28 cm band — LIBERO-PRO's position-perturbation regime, where
  fine-tuned 7 B VLAs fall from 90+ % to single digits. Kept as the position-generalisation suite.
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from data.world import Body, World

N_INIT_STATES = 50
SUITES = ("spatial", "object", "goal", "long")
# LIBERO's max policy steps 220/280/300/520 × 0.6: the mini robot moves ~2× faster per step than the Panda,
# and 0.6 keeps the expert's longest episodes at ~85 % of the limit, as LIBERO's longest demos are.
MAX_STEPS = {"spatial": 132, "object": 168, "goal": 180, "long": 312}

COLORS = {  # name → (side rgb, top rgb)
    "black": ((40, 40, 45), (20, 20, 24)), "white": ((235, 235, 230), (250, 250, 245)),
    "red": ((200, 40, 35), (225, 60, 50)), "green": ((50, 150, 60), (70, 180, 80)),
    "blue": ((40, 80, 200), (60, 100, 225)), "yellow": ((230, 200, 40), (245, 220, 70)),
    "orange": ((240, 130, 30), (250, 150, 50)), "brown": ((120, 70, 35), (140, 85, 45)),
    "purple": ((120, 50, 150), (140, 70, 170)), "grey": ((140, 140, 145), (165, 165, 170)),
    "silver": ((185, 190, 200), (205, 210, 220)), "pink": ((230, 120, 160), (240, 145, 180)),
    "wooden": ((150, 105, 60), (170, 125, 75)), "cream": ((230, 220, 190), (240, 232, 205)),
    "yellow and white": ((230, 200, 40), (250, 250, 245)), "dark": ((60, 60, 65), (35, 35, 38)),
    "wicker": ((190, 150, 90), (110, 80, 45)),
}

# kind → geometry and affordances (see data.world.Body for the fields)
CATALOG = {
    "bowl":     dict(shape="cyl", sx=0.034, h=0.030, graspable=True, grasp_width=0.062, floor=0.006, container=True, inner=0.8),
    "plate":    dict(shape="cyl", sx=0.055, h=0.010, floor=0.010, inner=0.9),
    "ramekin":  dict(shape="cyl", sx=0.026, h=0.030, graspable=True, grasp_width=0.048, floor=0.030, inner=1.3),
    "mug":      dict(shape="cyl", sx=0.024, h=0.050, graspable=True, grasp_width=0.044),
    "can":      dict(shape="cyl", sx=0.022, h=0.060, graspable=True, grasp_width=0.040),
    "bottle":   dict(shape="cyl", sx=0.020, h=0.085, graspable=True, grasp_width=0.036),
    "box":      dict(shape="box", sx=0.030, sy=0.020, h=0.025, graspable=True, grasp_width=0.036),
    "carton":   dict(shape="box", sx=0.022, sy=0.022, h=0.070, graspable=True, grasp_width=0.040),
    "moka_pot": dict(shape="cyl", sx=0.026, h=0.060, graspable=True, grasp_width=0.046),
    "book":     dict(shape="box", sx=0.032, sy=0.012, h=0.060, graspable=True, grasp_width=0.022),
    "cookie_box": dict(shape="box", sx=0.050, sy=0.035, h=0.035, floor=0.035, inner=1.1),
    "basket":   dict(shape="box", sx=0.080, sy=0.065, h=0.060, floor=0.008, container=True, inner=0.85),
    "caddy":    dict(shape="box", sx=0.070, sy=0.032, h=0.040, floor=0.006, container=True, inner=0.9),
    "rack":     dict(shape="box", sx=0.050, sy=0.040, h=0.030, floor=0.030, inner=1.0),
    "cabinet":  dict(shape="box", sx=0.100, sy=0.080, h=0.240, floor=0.240, inner=1.0, fixture="static"),
    "drawer":   dict(shape="box", sx=0.085, sy=0.072, h=0.060, floor=0.008, container=True, inner=0.9,
                     fixture="drawer", graspable=True, grasp_width=0.014, rail=(0.0, 0.12)),
    "stove":    dict(shape="box", sx=0.090, sy=0.070, h=0.030, floor=0.030, inner=1.0, fixture="static"),
    "knob":     dict(shape="cyl", sx=0.012, h=0.020, fixture="knob", graspable=True, grasp_width=0.014, rail=(0.0, 1.2)),
}
DEFAULT_LAYOUT = "libero"
LAYOUTS = ("libero", "libero-x2", "libero-x3", "wide")     # the named ones; any libero-x<k> is valid too


def layout_scale(layout: str) -> float | None:
    """The factor on LIBERO's spreads a layout name stands for: libero → 1, libero-x<k> → k, wide → None.
    Anything else is a ValueError whose one line lists the valid names."""
    if layout == "wide":
        return None
    m = re.fullmatch(r"libero(?:-x(\d+(?:\.\d+)?))?", layout or "")
    if m is None or (m.group(1) is not None and float(m.group(1)) <= 0):
        raise ValueError(f"unknown layout {layout!r}: expected one of {', '.join(LAYOUTS)} (or libero-x<k>, k > 0)")
    return float(m.group(1) or 1.0)


DRAWER_LEVELS = {"bottom": 0.010, "middle": 0.085, "top": 0.160}   # drawer base heights in the cabinet
DRAWER_OPEN, STOVE_ON = 0.08, 0.6                                   # success thresholds (m, rad)

# LIBERO-object's groceries: name → (kind, colour)
GROCERIES = {
    "alphabet soup": ("can", "red"), "cream cheese": ("box", "blue"), "salad dressing": ("bottle", "green"),
    "bbq sauce": ("bottle", "brown"), "ketchup": ("bottle", "red"), "tomato sauce": ("can", "orange"),
    "butter": ("box", "yellow"), "milk": ("carton", "white"), "chocolate pudding": ("box", "brown"),
    "orange juice": ("carton", "orange"),
}


def make_body(name: str, kind: str, color: str, label: str = "", **over) -> Body:
    spec = dict(CATALOG[kind])
    spec.setdefault("sy", spec["sx"])
    spec.update(over)
    return Body(name=name, kind=kind, color=color, label=label or name.replace("_", " "), **spec)


# ----------------------------------------------------------------------------- a scene under construction
class SceneBuilder:
    """Collects bodies and their sampled starting poses; `world()` freezes them into a World."""

    def __init__(self, rng: np.random.Generator, scale: float = 1.0):
        self.rng, self.scale, self.bodies, self.poses, self.supports, self.joints = rng, scale, [], [], [], []

    def jit(self, xy, spread: float) -> tuple[float, float]:
        """A canonical spot moved uniformly by up to ±spread·scale in x and in y (a LIBERO placement region)."""
        a = spread * self.scale
        return float(xy[0] + self.rng.uniform(-a, a)), float(xy[1] + self.rng.uniform(-a, a))

    def add(self, name, kind, color, xy, z=0.0, on=-1, yaw=0.0, label="", **over) -> int:
        self.bodies.append(make_body(name, kind, color, label, **over))
        self.poses.append([xy[0], xy[1], z, yaw])
        self.supports.append(on)
        self.joints.append(0.0)
        return len(self.bodies) - 1

    def add_on(self, name, kind, color, base: int, dxy=(0.0, 0.0), **over) -> int:
        """A body resting on (or in) body `base`."""
        b, (x, y, z, _) = self.bodies[base], self.poses[base]
        top = z + (b.floor if b.floor is not None else b.h)
        return self.add(name, kind, color, (x + dxy[0], y + dxy[1]), z=top, on=base, **over)

    def cabinet(self, xy, open_drawer: str = "", opening: float = 0.12) -> dict:
        cab = self.add("wooden_cabinet", "cabinet", "wooden", xy, label="the wooden cabinet")
        cs = CATALOG["cabinet"]
        out = {"cabinet": cab}
        for level, z in DRAWER_LEVELS.items():
            y = xy[1] - cs["sy"] + CATALOG["drawer"]["sy"]          # closed: front flush with the cabinet
            i = self.add(f"{level}_drawer", "drawer", "wooden", (xy[0], y), z=z, parent=cab,
                         label=f"the {level} drawer of the cabinet")
            if level == open_drawer:
                self.poses[i][1] -= opening
                self.joints[i] = opening
            out[level] = i
        return out

    def stove(self, xy) -> dict:
        st = self.add("flat_stove", "stove", "dark", xy, label="the stove")
        x, y = xy
        knob = self.add("stove_knob", "knob", "silver", (x + 0.06, y - 0.045), z=CATALOG["stove"]["h"],
                        parent=st, label="the stove knob")
        return {"stove": st, "knob": knob}

    def free_xy(self, region, clear: float = 0.10, tries: int = 400) -> tuple[float, float]:
        """A point in region ((x0, x1), (y0, y1)) at least `clear` from every body standing on the table."""
        (x0, x1), (y0, y1) = region
        for _ in range(tries):
            p = (float(self.rng.uniform(x0, x1)), float(self.rng.uniform(y0, y1)))
            if all(self._gap(p, i) >= clear for i in range(len(self.bodies)) if self.supports[i] == -1
                   and self.bodies[i].fixture != "drawer"):
                return p
        raise RuntimeError(f"could not place a body in {region}")

    def _gap(self, p, i) -> float:
        b, (x, y, _, _) = self.bodies[i], self.poses[i]
        if b.kind in ("cabinet", "stove", "basket", "caddy", "cookie_box", "rack"):   # big boxes: edge distance
            return max(abs(p[0] - x) - b.sx, abs(p[1] - y) - b.sy, 0.0) + 0.05
        return float(np.hypot(p[0] - x, p[1] - y))

    def world(self) -> World:
        w = World(list(self.bodies))
        poses = np.array(self.poses, dtype=np.float64).reshape(-1, 4)
        w.pos, w.yaw = poses[:, :3].copy(), poses[:, 3].copy()
        w.support, w.joint = np.array(self.supports, dtype=int), np.array(self.joints, dtype=np.float64)
        return w


# ----------------------------------------------------------------------------- tasks
@dataclass
class Task:
    suite: str
    task_id: int
    name: str                     # LIBERO-style file-ish name, e.g. "pick_up_the_black_bowl_..."
    language: str
    wide: Callable[[np.random.Generator], tuple[World, list]]    # rng → (world, expert plan), the wide layout
    canonical: Callable[[SceneBuilder], tuple[World, list]]     # builder → (world, plan): LIBERO's spots + jitter
    success: Callable[[World], bool]
    layout: str = DEFAULT_LAYOUT

    def __post_init__(self):
        self.scale = layout_scale(self.layout)

    def scene(self, k: int) -> tuple[World, list]:
        """The k-th fixed initial scene: deterministic in (suite, task_id, k, layout). The libero layouts share
        one seed per k, so libero-x3's scene k is libero's draw with three times the offsets."""
        if self.scale is None:
            return self.wide(np.random.default_rng(zlib.crc32(f"{self.suite}/{self.task_id}/{k}".encode())))
        rng = np.random.default_rng(zlib.crc32(f"{self.suite}/{self.task_id}/{k}/libero".encode()))
        for _ in range(100):      # wide spreads (libero-x3) can push two bodies into each other: draw again
            world, plan = self.canonical(SceneBuilder(rng, self.scale))
            if min_gap(world) >= 0.0:
                return world, plan
        raise RuntimeError(f"{self.suite} task {self.task_id}: no overlap-free layout at {self.layout}")


def min_gap(w: World) -> float:
    """The smallest gap between the footprints (axis-aligned boxes; a cylinder's is its bounding square) of two
    bodies standing on the table, fixtures aside; negative when two overlap."""
    free = [i for i, b in enumerate(w.bodies) if w.support[i] == -1 and not b.fixture]
    gap = lambda i, j: max(abs(w.pos[i, 0] - w.pos[j, 0]) - w.bodies[i].sx - w.bodies[j].sx,
                           abs(w.pos[i, 1] - w.pos[j, 1]) - w.bodies[i].sy - w.bodies[j].sy)
    return float(min((gap(i, j) for a, i in enumerate(free) for j in free[a + 1:]), default=1.0))


def on(a: str, b: str) -> Callable[[World], bool]:
    return lambda w: w.held != w.index[a] and w.support[w.index[a]] == w.index[b]


def drawer_open(d: str) -> Callable[[World], bool]:
    return lambda w: w.joint[w.index[d]] >= DRAWER_OPEN


def drawer_closed(d: str) -> Callable[[World], bool]:
    return lambda w: w.joint[w.index[d]] <= 0.01 and w.held != w.index[d]


def stove_on(w: World) -> bool:
    return w.joint[w.index["stove_knob"]] >= STOVE_ON


def right_of(a: str, b: str) -> Callable[[World], bool]:
    def pred(w):
        i, j = w.index[a], w.index[b]
        dx, dy = w.pos[i, 0] - w.pos[j, 0], abs(w.pos[i, 1] - w.pos[j, 1])
        return w.held != i and w.support[i] == -1 and dx > w.bodies[j].sx + 0.01 and dy < 0.08
    return pred


def all_of(*preds) -> Callable[[World], bool]:
    return lambda w: all(p(w) for p in preds)


def snake(text: str) -> str:
    return text.lower().replace(",", "").replace(" ", "_")


# ----------------------------------------------------------------------------- libero_spatial
SPATIAL_RELATIONS = [
    "between the plate and the ramekin", "next to the ramekin", "from table center", "on the cookie box",
    "in the top drawer of the wooden cabinet", "on the ramekin", "next to the cookie box", "on the stove",
    "next to the plate", "on the wooden cabinet",
]
MID = ((-0.22, 0.24), (-0.20, 0.08))        # the open middle band of the table
BOWL = "the black bowl"                      # both bowls look the same: the instruction tells them apart


def _spatial_scene(rel: int, rng) -> tuple[World, list]:
    s = SceneBuilder(rng)
    cab = s.cabinet((float(rng.uniform(-0.26, -0.20)), float(rng.uniform(0.22, 0.27))),
                    open_drawer="top" if rel == 4 else "")
    stove = s.stove((float(rng.uniform(0.18, 0.24)), float(rng.uniform(0.22, 0.27))))["stove"]
    plate = s.add("plate", "plate", "white", s.free_xy(MID, 0.14))
    if rel == 0:      # plate and ramekin ~0.2 apart along x with the target between them
        side = 1 if s.poses[plate][0] < 0.0 else -1
        px, py = s.poses[plate][:2]
        ram = s.add("ramekin", "ramekin", "cream", (px + side * 0.22, py + float(rng.uniform(-0.03, 0.03))))
    else:
        ram = s.add("ramekin", "ramekin", "cream", s.free_xy(MID, 0.14))
    cookie = s.add("cookie_box", "cookie_box", "red", s.free_xy(MID, 0.15))
    near = lambda i: (s.poses[i][0] + float(rng.choice([-1, 1])) * 0.085, s.poses[i][1] + float(rng.uniform(-0.02, 0.02)))
    if rel == 0:
        target = s.add("black_bowl_1", "bowl", "black", ((s.poses[plate][0] + s.poses[ram][0]) / 2, s.poses[plate][1]), label=BOWL)
    elif rel == 2:
        target = s.add("black_bowl_1", "bowl", "black", (float(rng.uniform(-0.02, 0.02)), float(rng.uniform(-0.05, -0.01))), label=BOWL)
    elif rel in (1, 6, 8):
        anchor = {1: ram, 6: cookie, 8: plate}[rel]
        for _ in range(50):                       # the side of the anchor that is free
            xy = near(anchor)
            if all(s._gap(xy, i) > 0.075 for i in range(len(s.bodies)) if i != anchor and s.supports[i] == -1
                   and s.bodies[i].fixture != "drawer") and abs(xy[0]) < 0.32:
                break
        target = s.add("black_bowl_1", "bowl", "black", xy, label=BOWL)
    else:
        base = {3: cookie, 4: cab["top"], 5: ram, 7: stove, 9: cab["cabinet"]}[rel]
        dxy = (-0.03, 0.015) if rel == 7 else (0.0, -0.02 if rel == 4 else 0.0)
        target = s.add_on("black_bowl_1", "bowl", "black", base, dxy, label=BOWL)
    # the distractor bowl: on the table, away from the target and from the target's anchor
    anchors = [target] + {0: [plate, ram], 1: [ram], 6: [cookie], 8: [plate]}.get(rel, [])
    for _ in range(400):
        xy = s.free_xy(MID, 0.11)
        if all(np.hypot(xy[0] - s.poses[a][0], xy[1] - s.poses[a][1]) > 0.17 for a in anchors) and \
                (rel != 2 or abs(xy[0]) > 0.12):
            break
    s.add("black_bowl_2", "bowl", "black", xy, label=BOWL)
    return s.world(), [("pick_place", "black_bowl_1", "plate")]


# LIBERO-spatial's one scene: every task shares these spots; only the two bowls' start spots change per task
SPATIAL_SPOTS = {"cabinet": (-0.23, 0.245), "stove": (0.21, 0.245), "plate": (-0.13, -0.07),
                 "ramekin": (0.09, -0.07), "cookie_box": (0.17, 0.08), "black_bowl_2": (-0.06, 0.11)}
SPREAD_SPATIAL, SPREAD_RAISED = 0.015, 0.03   # table objects ±1.5 cm; a bowl on the stove or cabinet top ±3 cm
# where the target bowl starts, per relation: a table spot, or ("on", base, dxy, spread) for a bowl resting on a
# body (on the cookie box or ramekin it moves with them: their ±1.5 cm is its spread; the fixtures stay put)
SPATIAL_BOWL = {0: (-0.02, -0.07), 1: (0.19, -0.07), 2: (0.0, 0.01), 3: ("on", "cookie_box", (0.0, 0.0), 0.0),
                4: ("on", "top", (0.0, -0.02), SPREAD_SPATIAL), 5: ("on", "ramekin", (0.0, 0.0), 0.0),
                6: (0.05, 0.10), 7: ("on", "stove", (-0.03, 0.015), SPREAD_RAISED), 8: (-0.25, -0.07),
                9: ("on", "cabinet", (0.0, 0.0), SPREAD_RAISED)}


def _spatial_canonical(rel: int, s: SceneBuilder) -> tuple[World, list]:
    sp = SPATIAL_SPOTS
    fix = s.cabinet(sp["cabinet"], open_drawer="top" if rel == 4 else "")
    fix.update(s.stove(sp["stove"]))
    bodies = {"plate": s.add("plate", "plate", "white", s.jit(sp["plate"], SPREAD_SPATIAL)),
              "ramekin": s.add("ramekin", "ramekin", "cream", s.jit(sp["ramekin"], SPREAD_SPATIAL)),
              "cookie_box": s.add("cookie_box", "cookie_box", "red", s.jit(sp["cookie_box"], SPREAD_SPATIAL))}
    spot = SPATIAL_BOWL[rel]
    if spot[0] == "on":
        s.add_on("black_bowl_1", "bowl", "black", {**fix, **bodies}[spot[1]], s.jit(spot[2], spot[3]), label=BOWL)
    else:
        s.add("black_bowl_1", "bowl", "black", s.jit(spot, SPREAD_SPATIAL), label=BOWL)
    s.add("black_bowl_2", "bowl", "black", s.jit(sp["black_bowl_2"], SPREAD_SPATIAL), label=BOWL)
    return s.world(), [("pick_place", "black_bowl_1", "plate")]


def spatial_tasks(layout: str = DEFAULT_LAYOUT) -> list[Task]:
    out = []
    for i, rel in enumerate(SPATIAL_RELATIONS):
        lang = f"pick up the black bowl {rel} and place it on the plate"
        out.append(Task("spatial", i, snake(lang), lang, lambda rng, r=i: _spatial_scene(r, rng),
                        lambda b, r=i: _spatial_canonical(r, b), on("black_bowl_1", "plate"), layout))
    return out


# ----------------------------------------------------------------------------- libero_object
OBJECT_TARGETS = list(GROCERIES)


def object_groceries(t: int) -> list[str]:
    """Task t's target, then the five distractors the task fixes for its scene (as each LIBERO-object scene does)."""
    others = [g for g in OBJECT_TARGETS if g != OBJECT_TARGETS[t]]
    return [OBJECT_TARGETS[t]] + [others[i] for i in np.random.default_rng(t).permutation(len(others))[:5]]


def _object_scene(t: int, rng) -> tuple[World, list]:
    s = SceneBuilder(rng)
    basket_xy = (float(rng.uniform(-0.2, 0.2)), float(rng.uniform(0.18, 0.26)))
    s.add("basket", "basket", "wicker", basket_xy, label="the basket")
    for g in object_groceries(t):
        kind, color = GROCERIES[g]
        s.add(snake(g), kind, color, s.free_xy(((-0.28, 0.28), (-0.20, 0.10)), 0.085), label=f"the {g}")
    target = snake(OBJECT_TARGETS[t])
    return s.world(), [("pick_place", target, "basket")]


# LIBERO-object's floor scene: the basket at the back, six spots in front; a task decides which groceries stand
# on them (its target and five others) and where its target stands
OBJECT_SPOTS = [(-0.18, -0.12), (0.0, -0.12), (0.18, -0.12), (-0.18, 0.04), (0.0, 0.04), (0.18, 0.04)]
BASKET_SPOT = (0.0, 0.22)
SPREAD_TARGET, SPREAD_OTHER, SPREAD_BASKET = 0.005, 0.01, 0.015


def _object_canonical(t: int, s: SceneBuilder) -> tuple[World, list]:
    s.add("basket", "basket", "wicker", s.jit(BASKET_SPOT, SPREAD_BASKET), label="the basket")
    spots = np.random.default_rng(100 + t).permutation(len(OBJECT_SPOTS))   # the task's arrangement
    for n, g in enumerate(object_groceries(t)):
        kind, color = GROCERIES[g]
        s.add(snake(g), kind, color, s.jit(OBJECT_SPOTS[spots[n]], SPREAD_TARGET if n == 0 else SPREAD_OTHER),
              label=f"the {g}")
    return s.world(), [("pick_place", snake(OBJECT_TARGETS[t]), "basket")]


def object_tasks(layout: str = DEFAULT_LAYOUT) -> list[Task]:
    return [Task("object", i, snake(f"pick up the {g} and place it in the basket"),
                 f"pick up the {g} and place it in the basket", lambda rng, t=i: _object_scene(t, rng),
                 lambda b, t=i: _object_canonical(t, b), on(snake(g), "basket"), layout)
            for i, g in enumerate(OBJECT_TARGETS)]


# ----------------------------------------------------------------------------- libero_goal (one scene, ten goals)
def _goal_scene(open_drawer: str, rng) -> World:
    s = SceneBuilder(rng)
    j = lambda a, b: float(rng.uniform(a, b))
    s.cabinet((j(-0.27, -0.23), j(0.23, 0.27)), open_drawer=open_drawer)
    s.stove((j(0.19, 0.23), j(0.22, 0.26)))
    s.add("rack", "rack", "wooden", (j(0.0, 0.04), j(0.26, 0.30)), label="the wine rack")
    s.add("plate", "plate", "white", (j(0.13, 0.19), j(-0.12, -0.06)))
    s.add("bowl", "bowl", "black", (j(-0.04, 0.04), j(-0.08, -0.02)))
    s.add("cream_cheese", "box", "blue", (j(-0.20, -0.14), j(-0.14, -0.06)), label="the cream cheese")
    s.add("wine_bottle", "bottle", "purple", (j(-0.10, -0.05), j(0.06, 0.12)), label="the wine bottle")
    return s.world()


# LIBERO-goal's one scene, shared by all ten tasks: (name, kind, colour, spot, spread, label)
GOAL_SPOTS = [("rack", "rack", "wooden", (0.02, 0.28), 0.015, "the wine rack"),
              ("plate", "plate", "white", (0.16, -0.09), 0.015, ""),
              ("bowl", "bowl", "black", (0.0, -0.05), 0.015, ""),
              ("cream_cheese", "box", "blue", (-0.17, -0.10), 0.02, "the cream cheese"),
              ("wine_bottle", "bottle", "purple", (-0.075, 0.09), 0.015, "the wine bottle")]


def _goal_canonical(s: SceneBuilder) -> World:
    s.cabinet((-0.25, 0.25))
    s.stove((0.21, 0.24))
    for name, kind, color, spot, spread, label in GOAL_SPOTS:
        s.add(name, kind, color, s.jit(spot, spread), label=label)
    return s.world()


GOAL_TASKS = [  # (instruction, plan, success)
    ("open the middle drawer of the cabinet", [("open", "middle_drawer")], drawer_open("middle_drawer")),
    ("put the bowl on the stove", [("pick_place", "bowl", "flat_stove")], on("bowl", "flat_stove")),
    ("put the wine bottle on top of the cabinet", [("pick_place", "wine_bottle", "wooden_cabinet")],
     on("wine_bottle", "wooden_cabinet")),
    ("open the top drawer and put the bowl inside", [("open", "top_drawer"), ("pick_place", "bowl", "top_drawer")],
     on("bowl", "top_drawer")),
    ("put the bowl on top of the cabinet", [("pick_place", "bowl", "wooden_cabinet")], on("bowl", "wooden_cabinet")),
    ("put the cream cheese on the plate", [("pick_place", "cream_cheese", "plate")], on("cream_cheese", "plate")),  # ≠ LIBERO (push the plate)
    ("put the cream cheese in the bowl", [("pick_place", "cream_cheese", "bowl")], on("cream_cheese", "bowl")),
    ("turn on the stove", [("turn_on", "stove_knob")], stove_on),
    ("put the bowl on the plate", [("pick_place", "bowl", "plate")], on("bowl", "plate")),
    ("put the wine bottle on the rack", [("pick_place", "wine_bottle", "rack")], on("wine_bottle", "rack")),
]


def goal_tasks(layout: str = DEFAULT_LAYOUT) -> list[Task]:
    return [Task("goal", i, snake(lang), lang, lambda rng, p=plan: (_goal_scene("", rng), list(p)),
                 lambda b, p=plan: (_goal_canonical(b), list(p)), succ, layout)
            for i, (lang, plan, succ) in enumerate(GOAL_TASKS)]


# ----------------------------------------------------------------------------- libero_10 ("long")
def _long_scene(t: int, rng) -> tuple[World, list]:
    s = SceneBuilder(rng)
    j = lambda a, b: float(rng.uniform(a, b))
    front = ((-0.28, 0.28), (-0.20, 0.08))
    if t in (0, 1, 7):
        s.add("basket", "basket", "wicker", (j(-0.15, 0.15), j(0.2, 0.26)), label="the basket")
        for g in ["alphabet soup", "tomato sauce", "cream cheese", "butter", "ketchup"]:
            kind, color = GROCERIES[g]
            s.add(snake(g), kind, color, s.free_xy(front, 0.09), label=f"the {g}")
        pair = {0: ("alphabet_soup", "tomato_sauce"), 1: ("cream_cheese", "butter"),
                7: ("alphabet_soup", "cream_cheese")}[t]
        return s.world(), [("pick_place", pair[0], "basket"), ("pick_place", pair[1], "basket")]
    if t in (2, 8):
        s.stove((j(-0.05, 0.05), j(0.22, 0.26)))
        s.add("moka_pot_1", "moka_pot", "silver", s.free_xy(front, 0.1), label="the moka pot")
        if t == 2:
            s.add("white_mug", "mug", "white", s.free_xy(front, 0.1))
            return s.world(), [("turn_on", "stove_knob"), ("pick_place", "moka_pot_1", "flat_stove")]
        s.add("moka_pot_2", "moka_pot", "silver", s.free_xy(front, 0.1), label="the moka pot")
        return s.world(), [("pick_place", "moka_pot_1", "flat_stove", (-0.045, 0.02)),
                           ("pick_place", "moka_pot_2", "flat_stove", (0.03, 0.02))]
    if t in (3, 9):
        s.cabinet((j(-0.05, 0.05), j(0.23, 0.27)), open_drawer="bottom" if t == 3 else "top")
        obj = s.add("black_bowl", "bowl", "black", s.free_xy(front, 0.1)) if t == 3 else \
            s.add("yellow_and_white_mug", "mug", "yellow and white", s.free_xy(front, 0.1))
        s.add("plate", "plate", "white", s.free_xy(front, 0.12))
        d = "bottom_drawer" if t == 3 else "top_drawer"
        return s.world(), [("pick_place", s.bodies[obj].name, d), ("close", d)]
    if t == 4:
        s.add("left_plate", "plate", "white", (j(-0.22, -0.12), j(0.12, 0.22)), label="the left plate")
        s.add("right_plate", "plate", "white", (j(0.12, 0.22), j(0.12, 0.22)), label="the right plate")
        s.add("white_mug", "mug", "white", s.free_xy(front, 0.1))
        s.add("yellow_and_white_mug", "mug", "yellow and white", s.free_xy(front, 0.1))
        return s.world(), [("pick_place", "white_mug", "left_plate"), ("pick_place", "yellow_and_white_mug", "right_plate")]
    if t == 5:
        cx, cy = j(-0.1, 0.1), j(0.16, 0.22)
        s.add("caddy_back", "caddy", "grey", (cx, cy + 0.033), label="the back compartment of the caddy")
        s.add("caddy_front", "caddy", "grey", (cx, cy - 0.033), label="the front compartment of the caddy")
        s.add("book", "book", "blue", s.free_xy(front, 0.1))
        s.add("white_mug", "mug", "white", s.free_xy(front, 0.1))
        return s.world(), [("pick_place", "book", "caddy_back")]
    # t == 6
    s.add("plate", "plate", "white", (j(-0.12, 0.05), j(0.1, 0.2)))
    s.add("white_mug", "mug", "white", s.free_xy(front, 0.1))
    s.add("chocolate_pudding", "box", "brown", s.free_xy(front, 0.1), label="the chocolate pudding")
    return s.world(), [("pick_place", "white_mug", "plate"), ("place_beside", "chocolate_pudding", "plate", (0.10, 0.0))]


# libero_10's scene families (tasks sharing a scene share its spots): ±2.5 cm per free body, the basket ±1 cm
SPREAD_LONG, SPREAD_LONG_BASKET = 0.025, 0.01
LONG_FRONT = [(-0.21, -0.10), (-0.07, -0.10), (0.07, -0.10), (0.21, -0.10), (-0.13, 0.06), (0.13, 0.06)]


def _long_canonical(t: int, s: SceneBuilder) -> tuple[World, list]:
    j = lambda xy: s.jit(xy, SPREAD_LONG)
    if t in (0, 1, 7):                                  # the basket scene
        s.add("basket", "basket", "wicker", s.jit((0.0, 0.235), SPREAD_LONG_BASKET), label="the basket")
        for g, spot in zip(["alphabet soup", "tomato sauce", "cream cheese", "butter", "ketchup"], LONG_FRONT):
            kind, color = GROCERIES[g]
            s.add(snake(g), kind, color, j(spot), label=f"the {g}")
        pair = {0: ("alphabet_soup", "tomato_sauce"), 1: ("cream_cheese", "butter"),
                7: ("alphabet_soup", "cream_cheese")}[t]
        return s.world(), [("pick_place", pair[0], "basket"), ("pick_place", pair[1], "basket")]
    if t in (2, 8):                                     # the stove scenes
        s.stove((0.0, 0.24))
        s.add("moka_pot_1", "moka_pot", "silver", j((-0.13, -0.05)), label="the moka pot")
        if t == 2:
            s.add("white_mug", "mug", "white", j((0.13, -0.05)))
            return s.world(), [("turn_on", "stove_knob"), ("pick_place", "moka_pot_1", "flat_stove")]
        s.add("moka_pot_2", "moka_pot", "silver", j((0.13, -0.05)), label="the moka pot")
        return s.world(), [("pick_place", "moka_pot_1", "flat_stove", (-0.045, 0.02)),
                           ("pick_place", "moka_pot_2", "flat_stove", (0.03, 0.02))]
    if t in (3, 9):                                     # the cabinet scenes
        s.cabinet((0.0, 0.25), open_drawer="bottom" if t == 3 else "top")
        obj = s.add("black_bowl", "bowl", "black", j((-0.15, -0.05))) if t == 3 else \
            s.add("yellow_and_white_mug", "mug", "yellow and white", j((-0.15, -0.05)))
        s.add("plate", "plate", "white", j((0.13, -0.07)))
        d = "bottom_drawer" if t == 3 else "top_drawer"
        return s.world(), [("pick_place", s.bodies[obj].name, d), ("close", d)]
    if t == 4:                                          # two plates, two mugs
        s.add("left_plate", "plate", "white", j((-0.17, 0.17)), label="the left plate")
        s.add("right_plate", "plate", "white", j((0.17, 0.17)), label="the right plate")
        s.add("white_mug", "mug", "white", j((0.09, -0.08)))
        s.add("yellow_and_white_mug", "mug", "yellow and white", j((-0.09, -0.08)))
        return s.world(), [("pick_place", "white_mug", "left_plate"), ("pick_place", "yellow_and_white_mug", "right_plate")]
    if t == 5:                                          # the study: a two-compartment caddy moves as one
        cx, cy = j((0.0, 0.19))
        s.add("caddy_back", "caddy", "grey", (cx, cy + 0.033), label="the back compartment of the caddy")
        s.add("caddy_front", "caddy", "grey", (cx, cy - 0.033), label="the front compartment of the caddy")
        s.add("book", "book", "blue", j((-0.12, -0.08)))
        s.add("white_mug", "mug", "white", j((0.12, -0.08)))
        return s.world(), [("pick_place", "book", "caddy_back")]
    s.add("plate", "plate", "white", j((-0.04, 0.15)))    # t == 6
    s.add("white_mug", "mug", "white", j((-0.16, -0.07)))
    s.add("chocolate_pudding", "box", "brown", j((0.12, -0.08)), label="the chocolate pudding")
    return s.world(), [("pick_place", "white_mug", "plate"), ("place_beside", "chocolate_pudding", "plate", (0.10, 0.0))]


LONG_TASKS = [
    ("put both the alphabet soup and the tomato sauce in the basket",
     all_of(on("alphabet_soup", "basket"), on("tomato_sauce", "basket"))),
    ("put both the cream cheese box and the butter in the basket",
     all_of(on("cream_cheese", "basket"), on("butter", "basket"))),
    ("turn on the stove and put the moka pot on it", all_of(stove_on, on("moka_pot_1", "flat_stove"))),
    ("put the black bowl in the bottom drawer of the cabinet and close it",
     all_of(on("black_bowl", "bottom_drawer"), drawer_closed("bottom_drawer"))),
    ("put the white mug on the left plate and put the yellow and white mug on the right plate",
     all_of(on("white_mug", "left_plate"), on("yellow_and_white_mug", "right_plate"))),
    ("pick up the book and place it in the back compartment of the caddy", on("book", "caddy_back")),
    ("put the white mug on the plate and put the chocolate pudding to the right of the plate",
     all_of(on("white_mug", "plate"), right_of("chocolate_pudding", "plate"))),
    ("put both the alphabet soup and the cream cheese box in the basket",
     all_of(on("alphabet_soup", "basket"), on("cream_cheese", "basket"))),
    ("put both moka pots on the stove", all_of(on("moka_pot_1", "flat_stove"), on("moka_pot_2", "flat_stove"))),
    ("put the yellow and white mug in the top drawer of the cabinet and close it",   # ≠ LIBERO (microwave)
     all_of(on("yellow_and_white_mug", "top_drawer"), drawer_closed("top_drawer"))),
]


def long_tasks(layout: str = DEFAULT_LAYOUT) -> list[Task]:
    return [Task("long", i, snake(lang), lang, lambda rng, t=i: _long_scene(t, rng),
                 lambda b, t=i: _long_canonical(t, b), succ, layout) for i, (lang, succ) in enumerate(LONG_TASKS)]


def suite_tasks(suite: str, layout: str = DEFAULT_LAYOUT) -> list[Task]:
    """The suite's ten tasks, their scenes drawn with `layout` (see the module docstring)."""
    return {"spatial": spatial_tasks, "object": object_tasks, "goal": goal_tasks, "long": long_tasks}[suite](layout)
