"""Moving table-top scenes with per-frame truth: objects slide, the camera pans and turns, objects occlude each
other and leave and re-enter the view (numpy + OpenCV only; development code beside vlm_ros.embedded.scenes).

The world (metres): X right, Y up, Z forward; the table is the plane Y = 0, the wall the plane Z = wall_z. The
camera stands at (x, cam_height, z), turned by `yaw` about Y and pitched down by `pitch`. Table and wall carry
textures fixed in the world, so a moving camera sees its background move. Objects are drawn as in
vlm_ros.embedded.scenes (shaded shapes facing the camera, with their own depth; a z-buffer resolves occlusions);
each has a path of keyframes (t, X, Z) on the table, linearly interpolated. Sizes are physical: an object's
pixel height changes with its distance.

Per frame the truth of every object, by its stable `object_id`: visible box and mask (None when not visible),
visible fraction (visible pixels / the pixels of its whole silhouette, inside the image or not), the visible
surface's 3-D centroid (the renderer's depth under the visible pixels, back-projected as core.geometry does) and
the object's centre, in the camera optical frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import cv2
import numpy as np

from vlm_ros.core.geometry import backproject
from vlm_ros.core.types import Box, CameraIntrinsics, Mask
from vlm_ros.embedded.scenes import COLOR_RGB, _noise_texture, _shape_layers

TEXTURE_M_PER_PX = 0.004  # world texture resolution
WORLD_HALF_WIDTH_M = 3.0  # textures span X in [-3, 3]


@dataclass(frozen=True)
class MovingObject:
    object_id: int
    shape: str
    color: str
    height_m: float  # physical height of its silhouette
    path: tuple[tuple[float, float, float], ...]  # keyframes (t seconds, X, Z) of its base on the table

    @property
    def label(self) -> str:
        return f"{self.color} {self.shape}"

    def where(self, t: float) -> tuple[float, float]:
        return _interpolate(self.path, t)


@dataclass(frozen=True)
class MotionScript:
    """Everything a moving scene is a function of (with the frame time and image size)."""

    seed: int
    duration_s: float
    objects: tuple[MovingObject, ...]
    camera_path: tuple[tuple[float, float, float, float], ...]  # keyframes (t, X, Z, yaw radians)
    pitch: float = math.radians(38.0)
    cam_height: float = 0.55
    wall_z: float = 1.9
    focal_480: float = 525.0  # focal length in pixels at image height 480 (scaled with the height)


@dataclass(frozen=True)
class ObjectState:
    """One object's truth in one frame (camera optical frame, metres; pixels in edge coordinates)."""

    object_id: int
    label: str
    box: Box | None  # visible extent; None when not visible
    mask: Mask | None
    visible_fraction: float
    surface_centroid: tuple[float, float, float] | None
    object_center: tuple[float, float, float]


@dataclass
class MovingFrame:
    """image (H, W, 3) uint8 RGB; depth (H, W) float32 metres; labels (H, W) int16: object_id, -1 = none."""

    t: float
    image: np.ndarray
    depth: np.ndarray
    labels: np.ndarray
    intrinsics: CameraIntrinsics
    objects: list[ObjectState]


def _interpolate(keys: tuple[tuple[float, ...], ...], t: float) -> tuple[float, ...]:
    """Linear interpolation of keyframes (t, values...) at time t (held before the first and after the last)."""
    if t <= keys[0][0]:
        return tuple(keys[0][1:])
    for (t0, *a), (t1, *b) in pairwise(keys):
        if t <= t1:
            w = (t - t0) / (t1 - t0) if t1 > t0 else 1.0
            return tuple(x + w * (y - x) for x, y in zip(a, b, strict=True))
    return tuple(keys[-1][1:])


def default_script(seed: int = 0, duration_s: float = 6.0) -> MotionScript:
    """The benchmark's scene, 6 s: a red cube slides along the table; a large yellow cube passes in front of a blue
    ball and hides it completely for about a second; a green star leaves the view on the right and comes back; the
    camera moves sideways and turns a little. Times scale with `duration_s`."""
    k = duration_s / 6.0
    objects = (
        MovingObject(1, "cube", "red", 0.12, ((0.0, -0.5, 0.85), (6.0 * k, -0.34, 0.85))),
        MovingObject(2, "ball", "blue", 0.1, ((0.0, 0.12, 0.74), (6.0 * k, 0.12, 0.74))),
        MovingObject(3, "cube", "yellow", 0.24, ((0.0, 0.72, 0.5), (6.0 * k, -0.22, 0.5))),
        MovingObject(4, "star", "green", 0.13, ((0.0, 0.42, 1.2), (1.4 * k, 1.0, 1.2), (3.2 * k, 1.0, 1.2),
                                                (4.8 * k, 0.42, 1.2), (6.0 * k, 0.42, 1.2))),
    )
    camera = ((0.0, 0.0, 0.0, 0.0), (3.0 * k, 0.04, 0.0, math.radians(3.0)), (6.0 * k, 0.08, 0.0, 0.0))
    return MotionScript(seed, duration_s, objects, camera)


class MotionRenderer:
    """Renders frames of one script at one size; textures and object appearance are made once."""

    def __init__(self, script: MotionScript, width: int = 640, height: int = 480):
        self.script, self.width, self.height = script, width, height
        rng = np.random.default_rng(script.seed)
        f = script.focal_480 * height / 480.0
        self.intrinsics = CameraIntrinsics(fx=f, fy=f, cx=width / 2.0, cy=height / 2.0)
        self._table_tex = self._texture(rng, np.array([120.0, 100.0, 80.0]), int(script.wall_z / TEXTURE_M_PER_PX) + 2)
        self._wall_tex = self._texture(rng, np.array([185.0, 180.0, 165.0]), int(2.5 / TEXTURE_M_PER_PX))
        self._object_seeds = {o.object_id: int(rng.integers(2**31)) for o in script.objects}
        self._object_gain = {o.object_id: float(rng.uniform(0.92, 1.06)) for o in script.objects}
        self._gain = float(rng.uniform(0.9, 1.1))
        self._cast = rng.uniform(0.94, 1.06, 3).astype(np.float32)

    @staticmethod
    def _texture(rng: np.random.Generator, base_rgb: np.ndarray, rows: int) -> np.ndarray:
        """A world texture (rows, cols, 3) float32: base colour plus smooth noise; cols span X in [-3, 3]."""
        cols = int(2 * WORLD_HALF_WIDTH_M / TEXTURE_M_PER_PX)
        tex = np.empty((rows, cols, 3), np.float32)
        tex[:] = (base_rgb + rng.uniform(-20, 20, 3)).astype(np.float32)
        tex += (_noise_texture(rng, rows, cols, 24) * 18.0 + _noise_texture(rng, rows, cols, 90) * 8.0)[..., None]
        return tex

    def _camera_axes(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Camera position (3,) and rotation (3, 3) whose columns are its right, down and forward axes in the world."""
        s = self.script
        x, z, yaw = _interpolate(s.camera_path, t)
        cp, sp, cy, sy = math.cos(s.pitch), math.sin(s.pitch), math.cos(yaw), math.sin(yaw)
        forward = np.array([sy * cp, -sp, cy * cp])
        right = np.array([cy, 0.0, -sy])
        down = np.cross(right, forward)
        return np.array([x, s.cam_height, z]), np.stack([right, down, forward], axis=1)

    def _background(self, position: np.ndarray, rotation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Colour (H, W, 3) float32 and depth (H, W) float32 of the table and wall."""
        k, h, w = self.intrinsics, self.height, self.width
        a = ((np.arange(w, dtype=np.float32) + 0.5 - k.cx) / k.fx)[None, :]  # (1, W)
        b = ((np.arange(h, dtype=np.float32) + 0.5 - k.cy) / k.fy)[:, None]  # (H, 1)
        # world direction of each pixel's ray, one (H, W) array per axis, with unit forward (depth) component
        ray = [np.float32(rotation[i, 0]) * a + np.float32(rotation[i, 1]) * b + np.float32(rotation[i, 2])
               for i in range(3)]
        with np.errstate(divide="ignore", invalid="ignore"):
            t_table = np.where(ray[1] < -1e-6, np.float32(position[1]) / -ray[1], np.inf).astype(np.float32)
            t_wall = np.where(ray[2] > 1e-6, np.float32(self.script.wall_z - position[2]) / ray[2], np.inf)
        table = np.isfinite(t_table) & (position[2] + t_table * ray[2] < self.script.wall_z)
        depth = np.where(table, t_table, t_wall).astype(np.float32)  # (H, W)
        col = ((position[0] + depth * ray[0] + WORLD_HALF_WIDTH_M) / TEXTURE_M_PER_PX).astype(np.float32)
        row_table = (position[2] + depth * ray[2]) / TEXTURE_M_PER_PX
        row_wall = (position[1] + depth * ray[1]) / TEXTURE_M_PER_PX
        image = cv2.remap(self._table_tex, col, np.where(table, row_table, -1e4).astype(np.float32), cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT)
        wall = cv2.remap(self._wall_tex, col, np.where(table, -1e4, row_wall).astype(np.float32), cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT)
        image += wall  # each pixel takes one of the two (the other samples outside its texture: 0)
        edge = table.astype(np.uint8)
        image[(cv2.dilate(edge, np.ones((3, 3), np.uint8)) - edge).astype(bool)] *= 0.6  # skirting line
        return image, depth

    def render(self, t: float, frame_index: int = 0, noise: float = 2.0) -> MovingFrame:
        """The frame at time t (seconds); `frame_index` seeds its sensor noise."""
        k, h, w = self.intrinsics, self.height, self.width
        position, rotation = self._camera_axes(t)
        image, depth = self._background(position, rotation)
        labels = np.full((h, w), -1, np.int16)
        placed = []
        for obj in self.script.objects:
            x, z = obj.where(t)
            p = rotation.T @ (np.array([x, 0.0, z]) - position)  # base point, camera optical frame
            if p[2] <= 0.05:
                continue
            hpx = obj.height_m * k.fy / p[2]
            mask, shade, bulge = _shape_layers(obj.shape, hpx, np.random.default_rng(self._object_seeds[obj.object_id]))
            ph, pw = mask.shape
            u_base, v_base = k.fx * p[0] / p[2] + k.cx, k.fy * p[1] / p[2] + k.cy  # edge coordinates
            left, top = int(round(u_base - pw / 2.0)), int(round(v_base - ph))
            half_w = pw * p[2] / k.fx / 2.0
            placed.append((obj, mask, shade, (p[2] - bulge * half_w).astype(np.float32), left, top, float(p[2])))

        shadow = np.zeros((h, w), np.float32)
        for _, mask, _, _, left, top, _ in placed:
            ph, pw = mask.shape
            ax = max(3, pw // 2)
            cv2.ellipse(shadow, (left + pw // 2 + int(ax * 0.15), top + ph - 2), (ax, max(2, ax // 4)),
                        0, 0, 360, 1.0, -1)
        image *= (1.0 - 0.35 * cv2.GaussianBlur(shadow, (0, 0), 4 * h / 480 + 1))[..., None]

        for obj, mask, shade, obj_depth, left, top, _ in placed:
            ph, pw = mask.shape
            y0, y1, x0, x1 = max(0, top), min(h, top + ph), max(0, left), min(w, left + pw)
            if y1 <= y0 or x1 <= x0:
                continue
            sl = (slice(y0, y1), slice(x0, x1))
            patch = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
            win = mask[patch] & (obj_depth[patch] < depth[sl])
            base = np.array(COLOR_RGB[obj.color], np.float32) * self._object_gain[obj.object_id]
            col = base[None, None, :] * shade[patch][..., None]
            if obj.color == "black":
                col = col + 18.0 * shade[patch][..., None]
            image[sl][win] = col[win]
            depth[sl][win] = obj_depth[patch][win]
            labels[sl][win] = obj.object_id

        image *= np.float32(self._gain) * self._cast[None, None, :]
        if noise > 0:
            sensor = np.random.default_rng((self.script.seed, frame_index)).standard_normal(image.shape, np.float32)
            sensor *= np.float32(noise)
            image += sensor
        rgb = np.clip(image, 0, 255).astype(np.uint8)
        truth = [self._truth(obj, mask, left, top, z_base, labels, depth)
                 for obj, mask, _, _, left, top, z_base in placed]
        return MovingFrame(t, rgb, depth, labels, k, truth)

    def _truth(self, obj: MovingObject, mask: np.ndarray, left: int, top: int, z_base: float, labels: np.ndarray,
               depth: np.ndarray) -> ObjectState:
        k = self.intrinsics
        ph, pw = mask.shape
        center = backproject(left + pw / 2.0 - 0.5, top + ph / 2.0 - 0.5, z_base, k)
        vs, us = np.nonzero(labels == obj.object_id)
        fraction = len(vs) / max(1, int(mask.sum()))
        if len(vs) == 0:
            return ObjectState(obj.object_id, obj.label, None, None, 0.0, None, _floats(center))
        box = Box(float(us.min()), float(vs.min()), float(us.max() + 1), float(vs.max() + 1))
        x0, y0, x1, y1 = int(box.x_min), int(box.y_min), int(box.x_max), int(box.y_max)
        points = np.stack(backproject(us, vs, depth[vs, us].astype(np.float64), k))  # (3, n)
        return ObjectState(obj.object_id, obj.label, box, Mask(x0, y0, labels[y0:y1, x0:x1] == obj.object_id, "truth"),
                           fraction, _floats(points.mean(axis=1)), _floats(center))


def _floats(values) -> tuple[float, float, float]:
    return tuple(float(v) for v in values)  # type: ignore[return-value]
