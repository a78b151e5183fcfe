"""mini-LIBERO rendering: flat-shaded polygons, perspective cameras, painter's algorithm, pillow.

Every body gets a small local mesh once per scene (boxes, 10-sided cylinders, kind-specific details such as
a mug's handle, a bottle's neck, a drawer's handle, the stove's burner that glows when the stove is on).
Per frame all vertices of all bodies are posed and projected in one numpy pass; visible faces (back faces
and faces crossing the near plane culled) are sorted far-to-near and filled with pillow. Two cameras as in
LIBERO: `agentview` (fixed, in front of the table, looking at the robot) and `eye_in_hand` (on the wrist,
looking down between the fingers).

Images come out upright here; the environment flips them 180° to mimic robosuite's OpenGL frames (see
data/mini_libero.py for the convention).
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from data.scenes import COLORS, STOVE_ON
from data.world import World, quat_yaw

LIGHT = np.array([0.35, -0.45, 1.0]) / np.linalg.norm([0.35, -0.45, 1.0])
SKY, TABLE_RGB = (70, 75, 85), (196, 170, 132)
TABLE = ((-0.42, 0.42), (-0.32, 0.42))              # table top extent (x, y)
N_SIDES = 10                                        # cylinder facets


# ----------------------------------------------------------------------------- meshes (local frame)
class Mesh:
    def __init__(self):
        self.v, self.faces, self.colors, self.tags = [], [], [], []

    def add(self, verts, faces, colors, tag=0):
        base = len(self.v)
        self.v.extend(verts)
        for f, c in zip(faces, colors):
            self.faces.append([base + i for i in f])
            self.colors.append(c)
            self.tags.append(tag)

    def box(self, sx, sy, z0, z1, side, top, cx=0.0, cy=0.0, tag=0):
        v = [(cx + x, cy + y, z) for z in (z0, z1) for x, y in ((-sx, -sy), (sx, -sy), (sx, sy), (-sx, sy))]
        faces = [[4, 5, 6, 7], [0, 1, 5, 4], [1, 2, 6, 5], [2, 3, 7, 6], [3, 0, 4, 7]]
        self.add(v, faces, [top] + [side] * 4, tag)

    def cyl(self, r0, r1, z0, z1, side, top, cx=0.0, cy=0.0, tag=0):
        """A frustum from radius r0 at z0 to r1 at z1 (r0 == r1: a cylinder), capped on top."""
        ang = np.linspace(0, 2 * np.pi, N_SIDES, endpoint=False)
        v = [(cx + r * math.cos(a), cy + r * math.sin(a), z) for r, z in ((r0, z0), (r1, z1)) for a in ang]
        n = N_SIDES
        faces = [list(range(n, 2 * n))] + [[i, (i + 1) % n, n + (i + 1) % n, n + i] for i in range(n)]
        self.add(v, faces, [top] + [side] * n, tag)


def shade(rgb, normal) -> tuple:
    k = 0.55 + 0.45 * max(0.0, float(np.dot(normal, LIGHT)))
    return tuple(int(min(255, c * k)) for c in rgb)


def body_mesh(b) -> Mesh:
    side, top = COLORS[b.color]
    m, h, r = Mesh(), b.h, b.sx
    dark = tuple(int(c * 0.45) for c in top)
    if b.kind == "bowl":
        m.cyl(r * 0.6, r, 0.0, h, side, dark)
    elif b.kind == "mug":
        m.cyl(r, r, 0.0, h, side, top)
        m.box(0.006, 0.004, h * 0.25, h * 0.8, side, side, cx=r + 0.005)
    elif b.kind == "bottle":
        m.cyl(r, r, 0.0, h * 0.65, side, top)
        m.cyl(r * 0.45, r * 0.45, h * 0.65, h, side, top)
    elif b.kind == "moka_pot":
        m.cyl(r, r * 0.7, 0.0, h, side, top)
        m.box(0.005, 0.004, h * 0.3, h * 0.9, (30, 30, 30), (30, 30, 30), cx=-r - 0.004)
    elif b.kind == "knob":
        m.cyl(r, r, 0.0, h * 0.6, side, top)
        m.box(r * 1.1, 0.003, h * 0.6, h, (30, 30, 30), (230, 230, 230))   # the pointer shows the angle
    elif b.shape == "cyl":
        m.cyl(r, r, 0.0, h, side, top)
    elif b.kind in ("basket", "caddy", "drawer"):
        m.box(b.sx, b.sy, 0.0, h, side, dark)        # open-top containers show a dark inside
        if b.kind == "drawer":
            m.box(0.025, 0.006, h * 0.45, h * 0.75, (60, 60, 60), (80, 80, 80), cy=-b.sy - 0.006)
    elif b.kind == "stove":
        m.box(b.sx, b.sy, 0.0, h, side, top)
        m.cyl(0.045, 0.045, h, h + 0.002, (50, 50, 50), (50, 50, 50), cx=-0.015, cy=0.01, tag=1)
    else:
        m.box(b.sx, b.sy, 0.0, h, side, top)
    return m


def gripper_meshes() -> list[Mesh]:
    """Pseudo-bodies posed from the eef each frame: palm, left finger, right finger."""
    palm, fl, fr = Mesh(), Mesh(), Mesh()
    white, grey = (225, 225, 225), (90, 90, 95)
    palm.box(0.048, 0.012, 0.045, 0.065, white, white)
    fl.box(0.005, 0.009, 0.0, 0.047, grey, grey)
    fr.box(0.005, 0.009, 0.0, 0.047, grey, grey)
    return [palm, fl, fr]


# ----------------------------------------------------------------------------- cameras
def look_at(pos, target, up) -> np.ndarray:
    """Rows: right, down, forward (camera x to the right of the image, y down the image, z into it)."""
    f = np.asarray(target, float) - pos
    f /= np.linalg.norm(f)
    r = np.cross(f, up)
    r /= np.linalg.norm(r)
    return np.stack([r, np.cross(f, r), f])


AGENT_POS = np.array([0.0, -0.62, 0.56])
AGENT_BASIS = look_at(AGENT_POS, [0.0, 0.07, 0.03], [0.0, 0.0, 1.0])
AGENT_FOV, WRIST_FOV = math.radians(46), math.radians(80)


class Renderer:
    """Renders one World (its bodies fixed at construction) from both cameras."""

    def __init__(self, world: World, size: int = 128):
        self.world, self.size = world, size
        meshes = [body_mesh(b) for b in world.bodies] + gripper_meshes()
        self.n_real = len(world.bodies)
        verts, faces, colors, tags, fbody, vbody = [], [], [], [], [], []
        for bi, m in enumerate(meshes):
            base = len(verts)
            verts += m.v
            vbody += [bi] * len(m.v)
            for f, c, t in zip(m.faces, m.colors, m.tags):
                faces.append([base + i for i in f])
                colors.append(c)
                tags.append(t)
                fbody.append(bi)
        self.v = np.array(verts)                                   # [V, 3] local vertices
        self.vbody = np.array(vbody)
        k = max(len(f) for f in faces)
        self.nvert = np.array([len(f) for f in faces])
        self.faces = np.array([f + [f[-1]] * (k - len(f)) for f in faces])    # [F, K], padded by repetition
        self.fbody, self.tags = np.array(fbody), np.array(tags)
        self.colors = np.array(colors, dtype=float)                # [F, 3] unshaded
        # local normals from the first three vertices (faces are planar, wound counter-clockwise from outside)
        a, b, c = (self.v[self.faces[:, i]] for i in range(3))
        n = np.cross(b - a, c - a)
        self.nloc = n / np.linalg.norm(n, axis=1, keepdims=True)
        self.shaded = [shade(col, nrm) for col, nrm in zip(self.colors, self.nloc)]
        self.burner = np.nonzero(self.tags == 1)[0]
        self.knob = world.index.get("stove_knob", -1)
        self.gripper_ids = np.arange(self.n_real, self.n_real + 3)
        self._background = self._table_image(AGENT_POS, AGENT_BASIS, AGENT_FOV)

    # --------------------------------------------------------------------- posing
    def _pose(self) -> tuple[np.ndarray, np.ndarray]:
        w = self.world
        yaw_g = quat_yaw(w.eef_quat)
        c, s = math.cos(yaw_g), math.sin(yaw_g)
        off = np.array([c, s, 0.0]) * (w.width / 2 + 0.005)
        pos = np.concatenate([w.pos, [w.eef_pos, w.eef_pos - off, w.eef_pos + off]])
        yaw = np.concatenate([w.yaw, [yaw_g] * 3])
        return pos, yaw

    def _world_vertices(self, pos, yaw):
        c, s = np.cos(yaw)[self.vbody], np.sin(yaw)[self.vbody]
        x, y = self.v[:, 0], self.v[:, 1]
        return np.stack([c * x - s * y, s * x + c * y, self.v[:, 2]], axis=1) + pos[self.vbody]

    # --------------------------------------------------------------------- one camera
    def _project(self, pts, cam_pos, basis, fov):
        p = (pts - cam_pos) @ basis.T                              # [V, 3] camera frame
        f = 0.5 * self.size / math.tan(fov / 2)
        z = np.maximum(p[:, 2], 1e-6)
        uv = np.stack([p[:, 0] / z * f + self.size / 2, p[:, 1] / z * f + self.size / 2], axis=1)
        return uv, p[:, 2]

    def _table_image(self, cam_pos, basis, fov) -> Image.Image:
        img = Image.new("RGB", (self.size, self.size), SKY)
        (x0, x1), (y0, y1) = TABLE
        corners = np.array([[x0, y0, 0], [x1, y0, 0], [x1, y1, 0], [x0, y1, 0]], float)
        uv, z = self._project(corners, cam_pos, basis, fov)
        if np.all(z > 0.01):
            ImageDraw.Draw(img).polygon(uv.ravel().tolist(), fill=TABLE_RGB)
        else:                                                      # the wrist camera is always above the table
            img.paste(TABLE_RGB, (0, 0, self.size, self.size))
        return img

    def _draw(self, img, wv, yaw, cam_pos, basis, fov, skip_bodies=()):
        uv, depth = self._project(wv, cam_pos, basis, fov)
        fz = depth[self.faces]                                     # [F, K]
        centre = wv[self.faces].mean(axis=1)                       # [F, 3]
        c, s = np.cos(yaw)[self.fbody], np.sin(yaw)[self.fbody]
        nx, ny = c * self.nloc[:, 0] - s * self.nloc[:, 1], s * self.nloc[:, 0] + c * self.nloc[:, 1]
        to_cam = cam_pos - centre
        facing = nx * to_cam[:, 0] + ny * to_cam[:, 1] + self.nloc[:, 2] * to_cam[:, 2] > 0
        ok = facing & (fz.min(axis=1) > 0.02)
        if len(skip_bodies):
            ok &= ~np.isin(self.fbody, skip_bodies)
        idx = np.nonzero(ok)[0]
        idx = idx[np.argsort(-fz[idx].mean(axis=1), kind="stable")]
        colors = self.shaded
        if len(self.burner) and self.knob >= 0 and self.world.joint[self.knob] >= STOVE_ON:
            colors = list(colors)
            for i in self.burner:
                colors[i] = (235, 70, 30)
        draw = ImageDraw.Draw(img)
        pts = uv[self.faces[idx]].reshape(len(idx), -1).tolist()   # [F', K*2] as lists: one conversion, not one per face
        for i, p in zip(idx.tolist(), pts):
            draw.polygon(p[: 2 * self.nvert[i]], fill=colors[i])
        return img

    def render(self, wrist: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """(agentview, eye_in_hand) uint8 [size, size, 3], upright; eye_in_hand is None when `wrist` is off."""
        pos, yaw = self._pose()
        wv = self._world_vertices(pos, yaw)
        agent = self._draw(self._background.copy(), wv, yaw, AGENT_POS, AGENT_BASIS, AGENT_FOV)
        if not wrist:
            return np.asarray(agent), None
        # wrist camera: 12 cm above the fingertips looking straight down, image "up" = gripper forward
        w = self.world
        g = quat_yaw(w.eef_quat)
        fwd = np.array([-math.sin(g), math.cos(g), 0.0])
        cam = w.eef_pos + np.array([0.0, 0.0, 0.12])
        basis = np.stack([np.array([math.cos(g), math.sin(g), 0.0]), -fwd, np.array([0.0, 0.0, -1.0])])
        wrist = self._draw(self._table_image(cam, basis, WRIST_FOV), wv, yaw, cam, basis, WRIST_FOV,
                           skip_bodies=self.gripper_ids[:1])
        return np.asarray(agent), np.asarray(wrist)


def agentview_uv(points: np.ndarray) -> np.ndarray:
    """[N, 3] world points → [N, 2] (u, v) in [0, 1] of the upright agentview image (u right, v down)."""
    p = (np.atleast_2d(points) - AGENT_POS) @ AGENT_BASIS.T
    f = 0.5 / math.tan(AGENT_FOV / 2)
    return np.stack([p[:, 0] / p[:, 2] * f + 0.5, p[:, 1] / p[:, 2] * f + 0.5], axis=1)
