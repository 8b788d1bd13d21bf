"""Deterministic renderer of table-top scenes with ground truth (numpy + OpenCV only).

A pinhole camera looks down at a table (a plane) in front of a wall (a vertical plane). Objects stand on the
table and are drawn as shaded 2-D shapes whose surfaces carry their own depth; a z-buffer resolves the
occlusions between them, so image, depth, instance labels, masks and boxes agree by construction.

3-D truth of each object (camera optical frame, metres), computed as `core.geometry` computes a target's, from
the renderer's own depth under the object's visible pixels, back-projected with the published intrinsics
(K's pixel-centre convention): the visible surface's centroid and axis-aligned extent. Besides, what the renderer
knows of the whole object: an object is drawn as a body symmetric about the fronto-parallel plane at its base
depth, bulging towards the camera by up to its `max bulge x half width`; its centre is its silhouette's centre
on that plane and its size is (silhouette width, silhouette height, 2 x max bulge x half width).
(The renderer casts pixel i's ray through i + 0.5 - c, half a pixel from K's convention: about 1 mm at 1 m.)

Geometry (camera optical frame, metres): x right, y down, z forward. The camera is pitched down by
`pitch` and sits `cam_height` above the table; the wall stands `wall_distance` ahead (horizontally).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from vlm_ros.core.geometry import backproject
from vlm_ros.core.types import Box, CameraIntrinsics, Mask

SHAPES: tuple[str, ...] = ("ball", "cube", "cone", "cylinder", "ring", "star")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "orange", "purple", "white", "black")
SIZES: tuple[str, ...] = ("small", "large")

# Base RGB of each colour, chosen to stay apart under the lighting changes below.
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (205, 30, 30),
    "green": (30, 160, 45),
    "blue": (35, 70, 215),
    "yellow": (235, 215, 35),
    "orange": (245, 130, 15),
    "purple": (135, 40, 175),
    "white": (240, 240, 240),
    "black": (22, 22, 22),
}

# Object height in pixels at 640x480 (scaled with the image height): size is what the camera sees.
SIZE_PX: dict[str, tuple[float, float]] = {"small": (62.0, 78.0), "large": (112.0, 140.0)}

MIN_VISIBLE = 0.65  # every object keeps at least this fraction of its own pixels visible
# A partial scene (training for what a moving camera sees): objects may be cut by the left or right image
# border (up to half their width) and hidden down to this fraction.
PARTIAL_MIN_VISIBLE = 0.25
MAX_OBJECTS = 6


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: str
    box: Box  # visible extent in source pixels
    position: tuple[float, float, float]  # camera optical frame, metres: box centre ray at the median visible depth
    visible_fraction: float
    # 3-D truth (camera optical frame, metres; see the module docstring)
    surface_centroid: tuple[float, float, float]  # mean of the visible pixels' 3-D points
    surface_min: tuple[float, float, float]  # axis-aligned extent of those points
    surface_max: tuple[float, float, float]
    object_center: tuple[float, float, float]  # the whole object's centre
    object_size: tuple[float, float, float]  # the whole object's size

    @property
    def label(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass
class Scene:
    """image (H, W, 3) uint8 RGB; depth (H, W) float32 metres; labels (H, W) int16: index into objects, -1 = none."""

    image: np.ndarray
    depth: np.ndarray
    labels: np.ndarray
    intrinsics: CameraIntrinsics
    objects: list[SceneObject]
    seed: int

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    def object_mask(self, index: int) -> Mask:
        """The visible pixels of object `index` (after occlusion), over its box."""
        box = self.objects[index].box
        x0, y0, x1, y1 = int(box.x_min), int(box.y_min), int(box.x_max), int(box.y_max)
        return Mask(x0, y0, self.labels[y0:y1, x0:x1] == index, "truth")


def _noise_texture(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth value noise in [-1, 1], (h, w) float32."""
    grid = rng.uniform(-1.0, 1.0, size=(cells, max(2, int(cells * w / h)))).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _background(rng: np.random.Generator, h: int, w: int, table: np.ndarray) -> np.ndarray:
    """Table and wall colours with texture, (h, w, 3) float32 in 0..255."""
    img = np.empty((h, w, 3), np.float32)
    grey = rng.uniform(85, 150)
    warm = rng.uniform(0, 30)
    table_rgb = np.array([grey + warm, grey + 0.4 * warm, grey - 0.5 * warm], np.float32)  # wood / grey tones
    if rng.random() < 0.35:  # grey-blue table
        table_rgb = np.full(3, rng.uniform(90, 150), np.float32) + rng.uniform(-15, 15, 3).astype(np.float32)
    wall_rgb = np.array([rng.uniform(140, 215), rng.uniform(140, 215), rng.uniform(130, 210)], np.float32)
    t_tex = _noise_texture(rng, h, w, int(rng.integers(3, 12))) * rng.uniform(8, 25)
    if rng.random() < 0.5:  # wood grain: stretched stripes
        stripes = _noise_texture(rng, h, w, 40)
        stripes = cv2.resize(stripes[:, : max(2, w // 40)], (w, h), interpolation=cv2.INTER_LINEAR)
        t_tex = t_tex + stripes * rng.uniform(6, 16)
    w_tex = _noise_texture(rng, h, w, int(rng.integers(2, 8))) * rng.uniform(5, 18)
    img[:] = wall_rgb
    img[table] = table_rgb
    tex = np.where(table, t_tex, w_tex)
    img += tex[..., None]
    # skirting line where wall meets table
    edge = table.astype(np.uint8)
    edge = cv2.dilate(edge, np.ones((3, 3), np.uint8)) - edge
    img[edge.astype(bool)] *= 0.6
    return img


def _plane_depths(
    h: int, w: int, k: CameraIntrinsics, pitch: float, cam_height: float, wall_distance: float
) -> tuple[np.ndarray, np.ndarray]:
    """Depth (z) of the visible table-or-wall surface, and the table mask."""
    v = (np.arange(h, dtype=np.float64) + 0.5 - k.cy) / k.fy
    vv = v[:, None]  # (H, 1): both planes are constant along image rows
    down = math.cos(pitch) * vv + math.sin(pitch)  # n_down . ray
    fwd = -math.sin(pitch) * vv + math.cos(pitch)  # n_forward . ray
    with np.errstate(divide="ignore"):
        z_table = np.where(down > 1e-6, cam_height / np.maximum(down, 1e-6), np.inf)
        z_wall = wall_distance / np.maximum(fwd, 1e-6)
    table = np.isfinite(z_table) & (z_table * fwd < wall_distance)  # (H, 1)
    depth = np.where(table, z_table, z_wall).astype(np.float32)
    return np.repeat(depth, w, axis=1), np.repeat(table, w, axis=1)


def _shape_layers(shape: str, hpx: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one object in a local patch with its base centre at the bottom middle.

    Returns mask (ph, pw) bool, shade (ph, pw) float32 brightness factor, bulge (ph, pw) float32 in [0, 1]
    (how far the surface comes towards the camera, as a fraction of the object's half width).
    """
    ss = 4  # supersampling for anti-aliased shape edges
    hp = int(round(hpx))
    if shape == "ball":
        wp = hp
    elif shape == "cube":
        wp = int(round(hp * 1.0))
    elif shape == "cone":
        wp = int(round(hp * 0.8))
    elif shape == "cylinder":
        wp = int(round(hp * 0.62))
    elif shape == "ring":
        wp = hp
    else:  # star
        wp = hp
    H, W = hp * ss, wp * ss
    m = np.zeros((H, W), np.uint8)
    yy, xx = np.mgrid[0:hp, 0:wp].astype(np.float32)
    xn = (xx + 0.5) / wp * 2 - 1  # -1..1 across
    yn = (yy + 0.5) / hp * 2 - 1
    shade = np.ones((hp, wp), np.float32)
    bulge = np.zeros((hp, wp), np.float32)
    lx = rng.uniform(-0.6, 0.6)  # light direction, x component
    if shape == "ball":
        cv2.circle(m, (W // 2, H // 2), W // 2 - ss, 255, -1, lineType=cv2.LINE_AA)
        rr = np.clip(xn**2 + yn**2, 0, 1)
        nz = np.sqrt(1 - rr)
        lam = np.clip(lx * xn * -1 * -1 + -0.5 * yn + 0.7 * nz, 0, 1) / 1.0
        spec = np.clip((nz * 0.7 - 0.5 * yn + lx * xn) - 0.85, 0, 1) * 4
        shade = 0.35 + 0.75 * lam + 0.5 * spec
        bulge = nz
    elif shape == "cube":
        s = int(W * 0.72)
        off = W - s
        front = np.array([[0, off], [s, off], [s, H - 1], [0, H - 1]], np.int32)
        top = np.array([[0, off], [off, 0], [W - 1, 0], [s, off]], np.int32)
        side = np.array([[s, off], [W - 1, 0], [W - 1, H - 1 - off], [s, H - 1]], np.int32)
        mt = np.zeros_like(m)
        ms = np.zeros_like(m)
        cv2.fillConvexPoly(m, front, 255, lineType=cv2.LINE_AA)
        cv2.fillConvexPoly(mt, top, 255, lineType=cv2.LINE_AA)
        cv2.fillConvexPoly(ms, side, 255, lineType=cv2.LINE_AA)
        mf_s = cv2.resize(m, (wp, hp), interpolation=cv2.INTER_AREA) > 127
        mt_s = cv2.resize(mt, (wp, hp), interpolation=cv2.INTER_AREA) > 127
        ms_s = cv2.resize(ms, (wp, hp), interpolation=cv2.INTER_AREA) > 127
        m = np.maximum(np.maximum(m, mt), ms)
        shade = np.where(mt_s & ~mf_s, 1.25, np.where(ms_s & ~mf_s, 0.62, 0.95)).astype(np.float32)
        shade = shade * (1.0 - 0.08 * yn)
        bulge = np.where(mf_s, 1.0, 0.6).astype(np.float32)
    elif shape == "cone":
        e = max(2, int(H * 0.08))
        tri = np.array([[W // 2, 0], [0, H - 1 - e], [W - 1, H - 1 - e]], np.int32)
        cv2.fillConvexPoly(m, tri, 255, lineType=cv2.LINE_AA)
        cv2.ellipse(m, (W // 2, H - 1 - e), (W // 2 - 1, e), 0, 0, 180, 255, -1, lineType=cv2.LINE_AA)
        prof = np.sqrt(np.clip(1 - xn**2, 0, 1))
        shade = 0.4 + 0.65 * np.clip(prof + lx * xn, 0, 1.2)
        bulge = prof * (yn + 1) / 2
    elif shape == "cylinder":
        e = max(2, int(H * 0.09))
        cv2.rectangle(m, (0, e), (W - 1, H - 1 - e), 255, -1)
        cv2.ellipse(m, (W // 2, H - 1 - e), (W // 2 - 1, e), 0, 0, 180, 255, -1, lineType=cv2.LINE_AA)
        mt = np.zeros_like(m)
        cv2.ellipse(mt, (W // 2, e), (W // 2 - 1, e), 0, 0, 360, 255, -1, lineType=cv2.LINE_AA)
        mt_s = cv2.resize(mt, (wp, hp), interpolation=cv2.INTER_AREA) > 127
        m = np.maximum(m, mt)
        prof = np.sqrt(np.clip(1 - xn**2, 0, 1))
        shade = np.where(mt_s, 1.2, 0.4 + 0.65 * np.clip(prof + lx * xn, 0, 1.2)).astype(np.float32)
        bulge = np.where(mt_s, 0.3, prof).astype(np.float32)
    elif shape == "ring":
        r_out = W // 2 - ss
        r_in = int(r_out * 0.45)
        cv2.circle(m, (W // 2, H // 2), r_out, 255, -1, lineType=cv2.LINE_AA)
        cv2.circle(m, (W // 2, H // 2), r_in, 0, -1, lineType=cv2.LINE_AA)
        rho = np.sqrt(xn**2 + yn**2)
        mid = (1 + r_in / r_out) / 2
        half = (1 - r_in / r_out) / 2
        t = np.clip((rho - mid) / half, -1, 1)
        nz = np.sqrt(1 - t**2)
        shade = 0.35 + 0.7 * nz + 0.25 * np.clip(-yn * t, 0, 1)
        bulge = nz * 0.5
    else:  # star
        pts = []
        for i in range(10):
            ang = -math.pi / 2 + i * math.pi / 5
            r = (W / 2 - ss) * (1.0 if i % 2 == 0 else 0.45)
            pts.append([W / 2 + r * math.cos(ang), H / 2 + 0.05 * H + r * math.sin(ang)])
        cv2.fillPoly(m, [np.array(pts, np.int32)], 255, lineType=cv2.LINE_AA)
        rho = np.sqrt(xn**2 + yn**2)
        shade = 1.05 - 0.35 * rho + 0.15 * lx * xn
        bulge = np.clip(1 - rho, 0, 1) * 0.4
    mask = cv2.resize(m, (wp, hp), interpolation=cv2.INTER_AREA) > 127
    return mask, shade.astype(np.float32), bulge.astype(np.float32)


def render_scene(
    seed: int, width: int = 640, height: int = 480, n_objects: int | None = None, partial: bool = False
) -> Scene:
    """Render one scene; everything is a function of (seed, width, height, n_objects, partial).

    partial: objects may be cut by the side borders and mostly hidden (PARTIAL_MIN_VISIBLE); the default
    scenes keep every object inside the image and at least MIN_VISIBLE visible.
    """
    rng = np.random.default_rng(seed)
    if n_objects is None:
        n_objects = int(rng.integers(1, MAX_OBJECTS + 1))
    if not 0 <= n_objects <= MAX_OBJECTS:
        raise ValueError(f"n_objects must be in [0, {MAX_OBJECTS}], got {n_objects}")
    scale = height / 480.0
    f = 525.0 * scale * rng.uniform(0.95, 1.05)
    k = CameraIntrinsics(fx=f, fy=f, cx=width / 2.0, cy=height / 2.0)
    pitch = math.radians(rng.uniform(28, 42))
    cam_height = rng.uniform(0.55, 0.8)
    wall_distance = rng.uniform(1.7, 2.6)
    plane_depth, table = _plane_depths(height, width, k, pitch, cam_height, wall_distance)
    table_rows = np.where(table.any(axis=1))[0]
    horizon = int(table_rows[0]) if len(table_rows) else height // 2

    min_visible = PARTIAL_MIN_VISIBLE if partial else MIN_VISIBLE

    # --- place objects (rejection sampling keeps each one visible enough) ---
    placed: list[dict] = []
    zbuf = np.full((height, width), np.inf, np.float32)
    ids = np.full((height, width), -1, np.int16)
    for _ in range(n_objects):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        color = COLORS[int(rng.integers(len(COLORS)))]
        size = SIZES[int(rng.integers(len(SIZES)))]
        lo, hi = SIZE_PX[size]
        hpx = rng.uniform(lo, hi) * scale
        mask, shade, bulge = _shape_layers(shape, hpx, rng)
        ph, pw = mask.shape
        for _try in range(60):
            v_base = int(rng.integers(max(horizon + int(0.15 * ph), ph + 2), height - 4))
            if partial:
                u_left = int(rng.integers(-(pw // 2), width - pw // 2))
            else:
                u_left = int(rng.integers(4, width - pw - 4))
            u_base = min(max(u_left + pw // 2, 0), width - 1)
            z_base = float(plane_depth[v_base, u_base])
            half_w = pw * z_base / k.fx / 2.0  # metres
            top = v_base - ph
            obj_depth = (z_base - bulge * half_w).astype(np.float32)
            # the part inside the image (all of it unless partial)
            c0, c1 = max(u_left, 0), min(u_left + pw, width)
            inside = slice(c0 - u_left, c1 - u_left)
            sl = (slice(top, v_base), slice(c0, c1))
            in_mask = mask[:, inside]
            # z-test against what is already placed
            new_ids = ids.copy()
            new_z = zbuf.copy()
            win = in_mask & (obj_depth[:, inside] < new_z[sl])
            new_z[sl][win] = obj_depth[:, inside][win]
            new_ids[sl][win] = len(placed)
            cand = placed + [dict(mask=in_mask, sl=sl, area=int(mask.sum()))]
            ok = True
            for i, p in enumerate(cand):
                vis = int(np.count_nonzero(new_ids[p["sl"]][p["mask"]] == i))
                if vis < min_visible * p["area"]:
                    ok = False
                    break
            if ok:
                ids, zbuf = new_ids, new_z
                placed.append(dict(shape=shape, color=color, size=size, mask=in_mask, area=int(mask.sum()),
                                   shade=shade[:, inside], depth=obj_depth[:, inside], sl=sl,
                                   cols=(u_left, u_left + pw), z_base=z_base,
                                   thickness=2.0 * float(bulge.max()) * half_w))
                break

    # --- paint ---
    img = _background(rng, height, width, table)
    # soft contact shadows under objects (drawn before the objects)
    shadow = np.zeros((height, width), np.float32)
    for p in placed:
        sl = p["sl"]
        v_base = sl[0].stop
        u_c = sum(p["cols"]) // 2
        ax = max(3, (p["cols"][1] - p["cols"][0]) // 2)
        cv2.ellipse(shadow, (u_c + int(ax * 0.15), v_base - 2), (ax, max(2, ax // 4)), 0, 0, 360, 1.0, -1)
    shadow = cv2.GaussianBlur(shadow, (0, 0), 4 * scale + 1)
    img *= (1.0 - 0.35 * shadow)[..., None]
    depth = plane_depth.copy()
    for i, p in enumerate(placed):
        sl = p["sl"]
        win = ids[sl] == i
        base = np.array(COLOR_RGB[p["color"]], np.float32) * rng.uniform(0.9, 1.08)
        col = base[None, None, :] * p["shade"][..., None]
        if p["color"] == "black":  # keep black readable: a lifted floor plus highlights
            col = col + 18.0 * p["shade"][..., None]
        img[sl][win] = col[win]
        depth[sl][win] = p["depth"][win]

    # --- lighting: brightness, contrast, colour cast, gradient, sensor noise ---
    gain = rng.uniform(0.75, 1.2)
    contrast = rng.uniform(0.8, 1.15)
    cast = rng.uniform(0.9, 1.1, 3).astype(np.float32)
    mean = float(img.mean())
    gx = np.linspace(-1, 1, width, dtype=np.float32)[None, :] * np.float32(rng.uniform(-0.12, 0.12))
    gy = np.linspace(-1, 1, height, dtype=np.float32)[:, None] * np.float32(rng.uniform(-0.12, 0.12))
    light = ((1.0 + gx + gy) * np.float32(gain * contrast))[..., None] * cast[None, None, :]  # (H, W, 3)
    img -= np.float32(mean * (1 - 1 / contrast))
    img *= light
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    noise *= np.float32(rng.uniform(1.0, 5.0))
    img += noise
    image = np.clip(img, 0, 255, out=img).astype(np.uint8)

    # --- ground truth ---
    objects: list[SceneObject] = []
    for i, p in enumerate(placed):
        vs, us = np.nonzero(ids == i)
        box = Box(float(us.min()), float(vs.min()), float(us.max() + 1), float(vs.max() + 1))
        z = float(np.median(depth[vs, us]))
        uc, vc = box.center
        pos = ((uc - k.cx) * z / k.fx, (vc - k.cy) * z / k.fy, z)
        points = np.stack(backproject(us, vs, depth[vs, us].astype(np.float64), k))  # (3, n)
        rows, (u0, u1) = p["sl"][0], p["cols"]
        z_base = p["z_base"]
        center = backproject((u0 + u1) / 2.0 - 0.5, (rows.start + rows.stop) / 2.0 - 0.5, z_base, k)
        full_size = ((u1 - u0) * z_base / k.fx, (rows.stop - rows.start) * z_base / k.fy, p["thickness"])
        objects.append(
            SceneObject(
                shape=p["shape"],
                color=p["color"],
                size=p["size"],
                box=box,
                position=pos,
                visible_fraction=len(vs) / float(p["area"]),
                surface_centroid=_floats(points.mean(axis=1)),
                surface_min=_floats(points.min(axis=1)),
                surface_max=_floats(points.max(axis=1)),
                object_center=_floats(center),
                object_size=_floats(full_size),
            )
        )
    return Scene(image=image, depth=depth.astype(np.float32), labels=ids, intrinsics=k, objects=objects, seed=seed)


def _floats(values) -> tuple[float, float, float]:
    return tuple(float(v) for v in values)  # type: ignore[return-value]
