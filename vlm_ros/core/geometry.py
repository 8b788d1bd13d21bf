"""Pinhole geometry: CameraInfo intrinsics, back-projection, a target's mask from depth, and its 3-D geometry.

Pixel conventions (the one place they meet):
- Boxes (core.types.Box) and points use *edge* coordinates: pixel column i spans [i, i + 1), so a box over the
  whole image is (0, 0, W, H) and the centre of pixel i is at i + 0.5. A box covers the pixels whose centres
  lie inside it. Masks (core.types.Mask) are pixel indices.
- CameraInfo's K uses *centre* coordinates (OpenCV / ROS): the centre of the top-left pixel is (0, 0).
  So an edge coordinate u maps to K's pixel coordinate u - 0.5. :func:`backproject` takes K's coordinates.
- Depth is registered to the colour image (same field of view) and may have another resolution: colour edge
  coordinate u is depth edge coordinate u * Wd / W (and v * Hd / H). Colour pixel i reads depth pixel
  floor((i + 0.5) * Wd / W); depth pixel j stands at colour edge coordinate (j + 0.5) * W / Wd.
Points are in the camera optical frame: x right, y down, z forward, metres.

:func:`target_geometry` is what the pipeline calls per target: mask, 3-D centroid, extent and valid-point count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from vlm_ros.core.types import Box, CameraIntrinsics, GeometryMethod, Mask, Shape3D

__all__ = [
    "intrinsics_from_k",
    "backproject",
    "surface_depth",
    "target_position",
    "LayerSettings",
    "depth_layer_mask",
    "TargetGeometry",
    "target_geometry",
]

MAX_REGION_PIXELS = 50_000  # depth pixels of a target's grown box read (its extension, read only for a box cut
# short, up to 3.7 times as many at the same stride); a larger box is read at a stride (bounded work)
MAX_POINTS = 20_000  # depth points behind one centroid and extent; more are subsampled at a regular stride


def intrinsics_from_k(k: Sequence[float]) -> CameraIntrinsics | None:
    """Intrinsics from a row-major 3x3 K (CameraInfo.k); None if malformed, non-finite or fx/fy <= 0.

    An all-zero K (an uncalibrated camera, as CameraInfo documents) therefore gives None.
    """
    try:
        values = [float(v) for v in k]
    except (TypeError, ValueError):
        return None
    if len(values) != 9:
        return None
    intr = CameraIntrinsics(fx=values[0], fy=values[4], cx=values[2], cy=values[5])
    return intr if intr.valid else None


def backproject(u: float, v: float, z: float, intrinsics: CameraIntrinsics) -> tuple[float, float, float]:
    """3-D point at depth z (metres) seen at pixel (u, v) in K's centre coordinates (see module doc)."""
    return ((u - intrinsics.cx) * z / intrinsics.fx, (v - intrinsics.cy) * z / intrinsics.fy, z)


def _pixel_range(lo: float, hi: float, n: int) -> tuple[int, int]:
    """Indices [i0, i1) of the pixels whose centres (i + 0.5) lie in [lo, hi), clamped to [0, n)."""
    i0 = max(0, math.ceil(lo - 0.5))
    i1 = min(n, math.ceil(hi - 0.5))
    return i0, i1


def _depth_scales(depth: np.ndarray, image_size: tuple[int, int] | None) -> tuple[float, float]:
    """(sx, sy): depth pixels per colour pixel; image_size is the colour image's (width, height), None = same."""
    if image_size is None:
        return 1.0, 1.0
    iw, ih = image_size
    if not (iw > 0 and ih > 0):
        raise ValueError(f"image_size must be positive, got {image_size}")
    return depth.shape[1] / iw, depth.shape[0] / ih


def _check_depth(depth_m: np.ndarray) -> np.ndarray:
    depth = np.asarray(depth_m)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {depth.shape}")
    return depth


def _valid_depths(patch: np.ndarray) -> np.ndarray:
    """The finite, positive values of a depth patch, float64, 1-D."""
    patch = np.asarray(patch, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return patch[np.isfinite(patch) & (patch > 0)]


def _stride(x0: int, y0: int, x1: int, y1: int) -> int:
    """The stride at which a region of depth pixels is read: at most about MAX_REGION_PIXELS of them."""
    return max(1, math.ceil(math.sqrt((x1 - x0) * (y1 - y0) / MAX_REGION_PIXELS)))


def _box_median(depth: np.ndarray, box: Box, intrinsics: CameraIntrinsics, inner_fraction: float, min_valid: int,
                sx: float, sy: float) -> tuple[tuple[float, float, float], int, int] | None:
    """(point, valid depths used, pixels read) of :func:`target_position`, or None."""
    hd, wd = depth.shape
    if hd == 0 or wd == 0:
        return None
    cu, cv = box.center  # edge coordinates of the colour image
    half_w = box.width * inner_fraction / 2.0
    half_h = box.height * inner_fraction / 2.0
    x0, x1 = _pixel_range((cu - half_w) * sx, (cu + half_w) * sx, wd)
    y0, y1 = _pixel_range((cv - half_h) * sy, (cv + half_h) * sy, hd)
    if x1 <= x0 or y1 <= y0:
        # region narrower than a depth pixel: use the pixel under the centre, if inside the image
        xi, yi = math.floor(cu * sx), math.floor(cv * sy)
        if not (0 <= xi < wd and 0 <= yi < hd):
            return None
        x0, x1, y0, y1 = xi, xi + 1, yi, yi + 1
    stride = _stride(x0, y0, x1, y1)
    patch = depth[y0:y1:stride, x0:x1:stride]  # (h, w)
    valid = _valid_depths(patch)  # (n_valid,)
    if valid.size == 0 or valid.size < min(max(min_valid, 1), patch.size):
        return None
    point = backproject(cu - 0.5, cv - 0.5, surface_depth(valid), intrinsics)
    return (point, int(valid.size), int(patch.size)) if all(math.isfinite(c) for c in point) else None


def target_position(
    depth_m: np.ndarray,
    box: Box,
    intrinsics: CameraIntrinsics | None,
    inner_fraction: float = 0.5,
    min_valid: int = 10,
    image_size: tuple[int, int] | None = None,
) -> tuple[float, float, float] | None:
    """A robust 3-D point for ``box`` from a registered depth image, or None (the BOX_MEDIAN method).

    depth_m: (Hd, Wd) metres, NaN/<=0 invalid. box: pixels of the colour image. intrinsics: of the colour
    image. image_size: (width, height) of the colour image when the depth is registered to it at another
    resolution (the box is scaled into depth pixels); None means the same resolution.

    z is the median of the valid depths inside the central ``inner_fraction`` (of width and height) of
    the box, or of their nearer group where they form two (see :func:`surface_depth`: a ring, a mug's
    handle or an object's edge shows what lies behind it); the point is the box centre back-projected at z.
    At least ``min(min_valid, n)`` valid pixels are required, n being the number of pixels in that central
    region (so a tiny box can still qualify).
    Never returns NaN or inf: None when intrinsics are missing/invalid, the box lies outside the depth
    image or too little valid depth is found.
    """
    if not 0.0 < inner_fraction <= 1.0:
        raise ValueError(f"inner_fraction must be in (0, 1], got {inner_fraction}")
    depth = _check_depth(depth_m)
    sx, sy = _depth_scales(depth, image_size)
    if intrinsics is None or not intrinsics.valid:
        return None
    found = _box_median(depth, box, intrinsics, inner_fraction, min_valid, sx, sy)
    return None if found is None else found[0]


def surface_depth(depths: np.ndarray, min_share: float = 0.2, min_gap: float = 0.05,
                  max_samples: int = 20_000) -> float:
    """The depth of the nearest surface among valid depths (metres, 1-D): the median of all of them, or of
    their nearer group when they form two groups.

    Two groups: Otsu's split of the depths leaves at least ``min_share`` of them on the near side, and the
    near group's 95th percentile lies more than ``min_gap`` (a fraction of the near median) in front of the
    far group's 5th, so a surface whose depth varies smoothly (a tilted plane) is not split. Depths beyond
    ``max_samples`` are subsampled to find the split.
    """
    values = np.sort(depths if depths.size <= max_samples else depths[:: depths.size // max_samples + 1])
    n = values.size
    if n < 2:
        return float(np.median(depths))
    k = np.arange(1, n)  # near group = values[:k]
    near_sum = np.cumsum(values)[:-1]
    mean_near = near_sum / k
    mean_far = (values.sum() - near_sum) / (n - k)
    split = int(np.argmax(k * (n - k) * (mean_far - mean_near) ** 2)) + 1
    near, far = values[:split], values[split:]
    z_near = _sorted_quantile(near, 0.5)
    all_median = _sorted_quantile(values, 0.5) if depths.size == n else float(np.median(depths))
    if split < min_share * n or _sorted_quantile(far, 0.05) - _sorted_quantile(near, 0.95) <= min_gap * z_near:
        return all_median
    return float(np.median(depths[depths < far[0]])) if depths.size > n else z_near


def _sorted_quantile(values: np.ndarray, q: float) -> float:
    """np.quantile(values, q) (linear interpolation) of an already sorted 1-D array, without its overhead."""
    position = q * (values.size - 1)
    i = int(position)
    j = min(i + 1, values.size - 1)
    return float(values[i] + (values[j] - values[i]) * (position - i))


# ---------------------------------------------------------------------------------------------- masks and 3-D


class _Grid:
    """Depth pixels read at a stride: rows[r], cols[c] index the depth image (bounded work for large regions)."""

    def __init__(self, x0: int, y0: int, x1: int, y1: int, stride: int):
        o = stride // 2  # the sample nearest each stride x stride block's centre
        self.stride = stride
        self.cols = np.arange(x0 + o, x1, stride)  # (w,)
        self.rows = np.arange(y0 + o, y1, stride)  # (h,)

    @classmethod
    def over(cls, x0: int, y0: int, x1: int, y1: int) -> _Grid:
        return cls(x0, y0, x1, y1, _stride(x0, y0, x1, y1))

    def read(self, depth: np.ndarray) -> np.ndarray:
        """(h, w) float32 depths at the grid's pixels."""
        if self.rows.size == 0 or self.cols.size == 0:
            return np.zeros((self.rows.size, self.cols.size), np.float32)
        s = self.stride
        return np.asarray(depth[self.rows[0]:self.rows[-1] + 1:s, self.cols[0]:self.cols[-1] + 1:s], np.float32)


def _inside(coords: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Which pixels (indices) have their centre in [lo, hi)."""
    return (coords + 0.5 >= lo) & (coords + 0.5 < hi)


def _fit_planes(u: np.ndarray, v: np.ndarray, w: np.ndarray, tolerance: float, max_planes: int = 2,
                iterations: int = 48, min_share: float = 0.25) -> list[np.ndarray]:
    """Planes through 3-D points given as pixel (u, v) and inverse depth w = 1/z (a plane is w = a u + b v + c).

    RANSAC on 3-point samples (a fixed seed: the same input gives the same planes); a plane must explain at least
    ``min_share`` of all the points within ``tolerance`` (relative to w); each next plane is fitted to the rest.
    Returns the (a, b, c) of each plane found.
    """
    rng = np.random.default_rng(0)
    planes: list[np.ndarray] = []
    rest = np.arange(u.size)
    need = max(12, int(min_share * u.size))
    for _ in range(max_planes):
        if rest.size < need:
            break
        pick = rest[rng.integers(0, rest.size, size=(iterations, 3))]  # (I, 3)
        a = np.stack([u[pick], v[pick], np.ones(pick.shape)], axis=-1)  # (I, 3, 3)
        ok = np.abs(np.linalg.det(a)) > 1e-6
        if not ok.any():
            break
        coef = np.linalg.solve(a[ok], w[pick[ok]][..., None])[..., 0]  # (I', 3)
        ur, vr, wr = u[rest], v[rest], w[rest]
        inliers = np.abs(coef[:, :1] * ur + coef[:, 1:2] * vr + coef[:, 2:] - wr) < tolerance * wr  # (I', n)
        best = inliers[int(np.argmax(inliers.sum(axis=1)))]
        if best.sum() < need:
            break
        m = np.stack([ur[best], vr[best], np.ones(int(best.sum()))], axis=1)  # (n_in, 3)
        planes.append(np.linalg.lstsq(m, wr[best], rcond=None)[0])  # least squares on the inliers
        rest = rest[~best]
    return planes


@dataclass(frozen=True)
class LayerSettings:
    """Tuning of :func:`depth_layer_mask` (relative values are fractions of the depth)."""

    grow: float = 0.15  # the box is searched grown by this fraction of its larger side (at least 2 depth pixels)
    extend: float = 0.75  # a part of the object that runs on past the grown box is followed up to this far beyond
    # the box (fraction of its larger side): a box cut short on a larger object
    plane_tolerance: float = 0.005  # a background plane's inliers lie within this relative depth of it
    background_margin: float = 0.01  # object pixels lie at least this much (relative) in front of the background
    layer_tolerance: float = 0.25  # the layer spans the object's depth +- this (relative)
    jump: float = 0.02  # neighbouring depths further apart than this (relative) belong to different parts


def _layer(depth: np.ndarray, box: Box, sx: float, sy: float,
           settings: LayerSettings) -> tuple[_Grid, np.ndarray] | None:
    """The depth-layer mask of a colour-image box: the grid of depth pixels read and its (h, w) bool mask, or None.

    See :func:`depth_layer_mask` for the method. The grown box is read first; only where a kept part runs on past
    it is the extension read (a larger region: the cost of a box cut short).
    """
    found = _layer_over(depth, box, sx, sy, settings, settings.grow)
    if found is not None and found[2] and settings.extend > settings.grow:
        found = _layer_over(depth, box, sx, sy, settings, settings.extend) or found
    return None if found is None else found[:2]


def _layer_over(depth: np.ndarray, box: Box, sx: float, sy: float, settings: LayerSettings,
                reach: float) -> tuple[_Grid, np.ndarray, bool] | None:
    """_layer over the box grown by `reach` of its larger side (at least the grown box): (grid, mask, whether a kept
    part runs on to the region's edge inside the image), or None."""
    hd, wd = depth.shape
    bx0, by0, bx1, by1 = box.x_min * sx, box.y_min * sy, box.x_max * sx, box.y_max * sy  # depth edge coordinates
    g = max(2.0, settings.grow * max(bx1 - bx0, by1 - by0))
    e = max(g, reach * max(bx1 - bx0, by1 - by0))
    gx0, gx1 = _pixel_range(bx0 - g, bx1 + g, wd)
    gy0, gy1 = _pixel_range(by0 - g, by1 + g, hd)
    if gx1 <= gx0 or gy1 <= gy0:
        return None
    ex0, ex1 = _pixel_range(bx0 - e, bx1 + e, wd)
    ey0, ey1 = _pixel_range(by0 - e, by1 + e, hd)
    grid = _Grid(ex0, ey0, ex1, ey1, _stride(gx0, gy0, gx1, gy1))  # at the grown box's stride
    z = grid.read(depth)  # (h, w)
    valid = (z > 0) & (z < np.inf)  # False for NaN too
    in_cols, in_rows = _inside(grid.cols, bx0, bx1), _inside(grid.rows, by0, by1)
    inbox = in_rows[:, None] & in_cols[None, :]  # (h, w)
    grown = _inside(grid.rows, gy0, gy1)[:, None] & _inside(grid.cols, gx0, gx1)[None, :]  # (h, w)
    if not (inbox & valid).any():
        return None

    cw, ch = (bx1 - bx0) / 4.0, (by1 - by0) / 4.0
    inner = (_inside(grid.rows, by0 + ch, by1 - ch)[:, None] & _inside(grid.cols, bx0 + cw, bx1 - cw)[None, :])
    seeds = z[valid & inner] if np.count_nonzero(valid & inner) >= 3 else z[valid & inbox]
    if seeds.size < 3:
        return None
    z_ref = surface_depth(seeds.astype(np.float64), max_samples=4096)  # the object's depth, first guess

    # 1. the background: planes through the valid depths around the box (the ring between box and grown box),
    #    those the object stands in front of
    ring_r, ring_c = np.nonzero(valid & grown & ~inbox)
    keep = np.linspace(0, ring_r.size - 1, min(ring_r.size, 400)).astype(int)  # (n,) regular subsample
    ring_r, ring_c = ring_r[keep], ring_c[keep]
    planes = _fit_planes(grid.cols[ring_c].astype(np.float64), grid.rows[ring_r].astype(np.float64),
                         1.0 / z[ring_r, ring_c].astype(np.float64), settings.plane_tolerance)
    centre_u, centre_v = (bx0 + bx1) / 2.0 - 0.5, (by0 + by1) / 2.0 - 0.5
    in_front = [z_ref * (a * centre_u + b * centre_v + c) < 1.0 - settings.background_margin for a, b, c in planes]
    # the box lies on the surface around it (a flat object, or a box inside a larger face of the object): the
    # mask is that surface inside the box
    flat = bool(planes) and not in_front[0]
    candidate = valid & inbox if flat else valid
    w_bg = None
    for (a, b, c), behind in zip(planes, in_front, strict=True):
        if behind and not flat:
            w = (a * grid.cols[None, :].astype(np.float32)) + (b * grid.rows[:, None] + c).astype(np.float32)  # (h, w)
            w_bg = w if w_bg is None else np.maximum(w_bg, w)  # the visible background: the nearest plane
    if w_bg is not None:
        with np.errstate(invalid="ignore", over="ignore"):
            w_bg *= z  # z / z_background; where a plane's 1/z <= 0 (beyond its horizon) nothing is background
        candidate = valid & (w_bg < 1.0 - settings.background_margin)  # in front of the background by the margin

    # 2. the object's layer: the nearer surface of what is left in the central half of the box (as target_position)
    seeds = z[candidate & inner]
    if seeds.size < 3:
        seeds = z[candidate & inbox]
    if seeds.size < 3:
        return None
    z_ref = surface_depth(seeds.astype(np.float64), max_samples=4096)
    with np.errstate(invalid="ignore"):
        layer = candidate & (np.abs(z - z_ref) <= settings.layer_tolerance * z_ref)

    # 3. split the layer at depth jumps (another object touching this one in the image), keep the parts that lie
    #    mostly inside the box, then give the parts back the pixels along their cut
    zl = np.where(layer, z, np.nan)
    with np.errstate(invalid="ignore"):
        jx = np.abs(np.diff(zl, axis=1)) > settings.jump * z_ref  # (h, w - 1)
        jy = np.abs(np.diff(zl, axis=0)) > settings.jump * z_ref  # (h - 1, w)
    cut = np.zeros_like(layer)
    cut[:, 1:] |= jx
    cut[:, :-1] |= jx
    cut[1:, :] |= jy
    cut[:-1, :] |= jy
    n, labels, stats, _ = cv2.connectedComponentsWithStats((layer & ~cut).astype(np.uint8), connectivity=4)
    rows, cols = np.nonzero(in_rows)[0], np.nonzero(in_cols)[0]  # the box: a rectangle of the grid
    in_box = np.bincount(labels[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].ravel(), minlength=n)
    in_grown = np.bincount(labels[grown], minlength=n)
    in_grown[0] = in_box[0] = 0  # label 0 = not in the layer
    if in_box.max() == 0:
        return None
    kept = (in_box >= 0.5 * in_grown) & (in_box > 0)
    # a kept part is followed past the grown box where it ends within the region read (one that runs on to its edge,
    # where that is not the image's edge, is more than the object: the layer goes on over another surface)
    left, top = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    right, bottom = left + stats[:, cv2.CC_STAT_WIDTH], top + stats[:, cv2.CC_STAT_HEIGHT]
    h, w = labels.shape
    runs_on = ((left == 0) & (ex0 > 0)) | ((top == 0) & (ey0 > 0)) | ((right == w) & (ex1 < wd)) \
        | ((bottom == h) & (ey1 < hd))
    mask = (kept & ~runs_on)[labels] | (kept[labels] & grown)
    near = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    mask |= near & cut & layer
    if not mask.any():
        return None
    return grid, _fill_holes(mask, valid), bool((kept & runs_on).any())


def _fill_holes(mask: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The mask with its holes of missing depth filled: groups of invalid pixels that only the mask surrounds."""
    if valid.all():
        return mask
    n, labels = cv2.connectedComponents((~valid).astype(np.uint8), connectivity=4)
    outside = np.pad(valid & ~mask, 1, constant_values=True)  # beyond the region counts as outside
    cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)
    touching = cv2.dilate(outside.astype(np.uint8), cross).astype(bool)[1:-1, 1:-1]
    open_ = np.zeros(n, bool)
    open_[labels[touching & ~valid]] = True  # invalid groups that touch a non-mask pixel
    open_[0] = True  # label 0 = valid pixels
    return mask | ~open_[labels]


def _colour_mask(grid: _Grid, mask: np.ndarray, sx: float, sy: float, image_size: tuple[int, int],
                 source: str) -> Mask | None:
    """A grid mask over depth pixels as a Mask of colour-image pixels (each reads its depth pixel), cropped."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    s = grid.stride
    # colour pixels whose depth pixel lies in the masked part of the grid
    left, top = grid.cols[0] - s // 2, grid.rows[0] - s // 2  # depth pixel where block 0 starts
    x0, x1 = _pixel_range((left + s * cols.min()) / sx, (left + s * (cols.max() + 1)) / sx, image_size[0])
    y0, y1 = _pixel_range((top + s * rows.min()) / sy, (top + s * (rows.max() + 1)) / sy, image_size[1])
    ci = (np.floor((np.arange(x0, x1) + 0.5) * sx).astype(np.int64) - left) // s  # (w,) grid column of each
    ri = (np.floor((np.arange(y0, y1) + 0.5) * sy).astype(np.int64) - top) // s  # (h,)
    ci = np.clip(ci, 0, mask.shape[1] - 1)
    ri = np.clip(ri, 0, mask.shape[0] - 1)
    return Mask(x0=int(x0), y0=int(y0), data=mask[np.ix_(ri, ci)], source=source).cropped()


def depth_layer_mask(
    depth_m: np.ndarray,
    box: Box,
    image_size: tuple[int, int] | None = None,
    settings: LayerSettings = LayerSettings(),
) -> Mask | None:
    """The object's depth layer near ``box``: a model-free mask (source "depth_layer"), or None.

    depth_m: (Hd, Wd) metres, NaN/<=0 invalid, registered to the colour image; image_size: the colour image's
    (width, height) when the depth has another resolution (None = same). box: colour-image pixels.

    The method (what a table-top segmenter does, in the box's neighbourhood only):
    1. Background: the box grown by ``settings.grow`` of its larger side; planes (up to two, RANSAC in inverse depth,
       inliers within ``plane_tolerance`` relative depth) through the valid depths of the ring around the box:
       the table the object stands on, a wall behind it. Pixels less than ``background_margin`` (relative) in
       front of the nearest plane are background, so the table around an object's base is not part of it.
       Where no plane explains a quarter of the ring, nothing is removed at this step; where nothing is left in
       front of the planes (a flat object lying on the table, or a box inside a larger face of the object), the
       mask is that surface's layer inside the box.
    2. Layer: the object's depth is the nearer surface of the central half of the box (:func:`surface_depth`, as
       :func:`target_position`); the layer is what is left within ``layer_tolerance`` (relative) of it.
    3. Parts: the layer is cut where neighbouring depths jump by more than ``jump`` (relative): another object
       touching this one in the image. Parts with at least half their pixels of the grown box inside the box are
       kept (the box may cut the object: what it cut off comes back), as are the pixels along their cuts. A kept
       part that goes on past the grown box is followed where it ends within ``settings.extend`` of the box's
       larger side beyond the box (a box cut short on a large object); one that runs on further (a large surface,
       or the layer going on over a surface no plane explained) ends at the grown box.
    Holes of missing depth that the mask surrounds are filled. The mask is computed on depth pixels (at a stride
    for boxes over MAX_REGION_PIXELS) and given in colour-image pixels, cropped to its extent. None when the box
    has no valid depth.
    """
    depth = _check_depth(depth_m)
    sx, sy = _depth_scales(depth, image_size)
    if depth.size == 0:
        return None
    found = _layer(depth, box, sx, sy, settings)
    if found is None:
        return None
    size = image_size or (depth.shape[1], depth.shape[0])
    return _colour_mask(*found, sx, sy, size, "depth_layer")


class TargetGeometry(NamedTuple):
    """What :func:`target_geometry` found; each field None when unknown."""

    mask: Mask | None
    position: tuple[float, float, float] | None
    shape: Shape3D | None


NO_GEOMETRY = TargetGeometry(None, None, None)


def _points(depth: np.ndarray, grid: _Grid, mask: np.ndarray, intrinsics: CameraIntrinsics, sx: float,
            sy: float) -> tuple[np.ndarray, int, int]:
    """(points (3, n) float64: x, y, z rows; valid count; masked count): the valid depth points of a grid mask,
    back-projected with the colour intrinsics. More than MAX_POINTS are subsampled at a regular stride (the
    counts are not)."""
    rows, cols = np.nonzero(mask)
    z = grid.read(depth)[rows, cols]  # (m,)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(z) & (z > 0)
    n_masked, n_valid = int(rows.size), int(np.count_nonzero(ok))
    rows, cols, z = rows[ok], cols[ok], z[ok]
    if n_valid > MAX_POINTS:
        keep = np.linspace(0, n_valid - 1, MAX_POINTS).astype(np.int64)
        rows, cols, z = rows[keep], cols[keep], z[keep]
    points = np.empty((3, z.size))
    points[2] = z
    u = (grid.cols[cols] + 0.5) / sx - 0.5  # K's (centre) coordinates of the depth pixels' centres
    v = (grid.rows[rows] + 0.5) / sy - 0.5
    points[0] = (u - intrinsics.cx) / intrinsics.fx * points[2]
    points[1] = (v - intrinsics.cy) / intrinsics.fy * points[2]
    return points, n_valid, n_masked


def _shape(points: np.ndarray, n_valid: int, n_considered: int, method: GeometryMethod,
           fence: float) -> tuple[tuple[float, float, float], Shape3D] | None:
    """Centroid and extent of the points (3, n) inside Tukey's fences on each axis (drops flying pixels), or None."""
    n = points.shape[1]
    if n == 0:
        return None
    sample = np.sort(points if n <= 4096 else points[:, :: n // 4096], axis=1)  # (3, m): quartiles from a subsample
    q1 = np.array([_sorted_quantile(row, 0.25) for row in sample])  # (3,)
    q3 = np.array([_sorted_quantile(row, 0.75) for row in sample])
    lo_fence, hi_fence = q1 - fence * (q3 - q1), q3 + fence * (q3 - q1)
    lo, hi = points.min(axis=1), points.max(axis=1)
    if (lo < lo_fence).any() or (hi > hi_fence).any():
        inside = np.all((points >= lo_fence[:, None]) & (points <= hi_fence[:, None]), axis=0)  # (n,)
        points = points[:, inside]  # (3, n')
        if points.shape[1] == 0:
            return None
        lo, hi = points.min(axis=1), points.max(axis=1)
    centroid = points.mean(axis=1)
    if not (np.isfinite(centroid).all() and np.isfinite(lo).all() and np.isfinite(hi).all()):
        return None
    shape = Shape3D(extent_min=tuple(float(c) for c in lo), extent_max=tuple(float(c) for c in hi),
                    valid_points=n_valid, valid_fraction=n_valid / max(1, n_considered), method=method)
    return tuple(float(c) for c in centroid), shape


def _mask_grid(mask: Mask, depth: np.ndarray, sx: float, sy: float,
               image_size: tuple[int, int]) -> tuple[_Grid, np.ndarray] | None:
    """The depth pixels whose centre falls on a colour-image mask's True pixels, as a grid mask."""
    h, w = mask.data.shape
    x1, y1 = min(mask.x0 + w, image_size[0]), min(mask.y0 + h, image_size[1])
    if x1 <= mask.x0 or y1 <= mask.y0:
        return None  # the mask lies outside the image
    gx0, gx1 = _pixel_range(mask.x0 * sx, x1 * sx, depth.shape[1])
    gy0, gy1 = _pixel_range(mask.y0 * sy, y1 * sy, depth.shape[0])
    if gx1 <= gx0 or gy1 <= gy0:
        return None
    grid = _Grid.over(gx0, gy0, gx1, gy1)
    ci = np.floor((grid.cols + 0.5) / sx).astype(np.int64) - mask.x0  # mask column under each depth pixel
    ri = np.floor((grid.rows + 0.5) / sy).astype(np.int64) - mask.y0
    ci, ri = np.clip(ci, 0, w - 1), np.clip(ri, 0, h - 1)
    data = mask.data[np.ix_(ri, ci)]  # (h', w')
    return (grid, data) if data.any() else None


def _point_geometry(depth: np.ndarray, point: tuple[float, float], intrinsics: CameraIntrinsics, sx: float,
                    sy: float, radius: int) -> TargetGeometry:
    u, v = point  # edge coordinates of the colour image
    xi, yi = math.floor(u * sx), math.floor(v * sy)
    hd, wd = depth.shape
    if not (0 <= xi < wd and 0 <= yi < hd):
        return NO_GEOMETRY
    patch = depth[max(0, yi - radius):yi + radius + 1, max(0, xi - radius):xi + radius + 1]
    valid = _valid_depths(patch)
    if valid.size == 0:
        return NO_GEOMETRY
    position = backproject(u - 0.5, v - 0.5, surface_depth(valid), intrinsics)
    if not all(math.isfinite(c) for c in position):
        return NO_GEOMETRY
    shape = Shape3D(extent_min=position, extent_max=position, valid_points=int(valid.size),
                    valid_fraction=valid.size / patch.size, method=GeometryMethod.POINT)
    return TargetGeometry(None, position, shape)


def target_geometry(
    depth_m: np.ndarray | None,
    intrinsics: CameraIntrinsics | None,
    image_size: tuple[int, int],
    *,
    box: Box | None = None,
    mask: Mask | None = None,
    point: tuple[float, float] | None = None,
    fence: float = 3.0,
    point_radius: int = 2,
    layer: LayerSettings = LayerSettings(),
) -> TargetGeometry:
    """Mask, 3-D centroid and extent of one target (camera optical frame, metres); fields None when unknown.

    depth_m: (Hd, Wd) metres (NaN/<=0 invalid) registered to the colour image of ``image_size`` (width, height),
    or None. intrinsics: of the colour image. Give the target's ``mask`` (a segmenter's or the model's polygons),
    else its ``box``, else its 2-D ``point`` (edge coordinates); the method, in that order:
    - MASK: the valid depth points under the mask (the mask is returned as given).
    - DEPTH_LAYER: the points under :func:`depth_layer_mask` of the box (returned as the target's mask).
    - BOX_MEDIAN, where the box has no depth layer (fewer than 3 valid depths in it: a box of a pixel or two):
      :func:`target_position`; its extent is that one point (size 0), no mask.
    - POINT: the point's ray at the nearer surface depth of the (2 * point_radius + 1)^2 depth pixels around
      it; extent size 0.
    With points: centroid = their mean, extent = their axis-aligned box, both over the points inside Tukey's
    fences (``fence`` x the interquartile range beyond the quartiles, per axis: flying pixels at depth edges
    and background the mask spills onto are dropped, an object's own surface is not trimmed);
    valid_points = masked depth pixels with valid depth, valid_fraction = their share of the masked depth
    pixels. At most MAX_POINTS points are used (a regular subsample). A single view sees the front surface only:
    the extent's z size is that surface's depth, not the object's.
    Never NaN or inf: no depth, invalid intrinsics, an empty or out-of-image mask or box, or no valid depth
    under it give no position (the caller counts it); a mask without depth is still returned.
    """
    if mask is None and box is None and point is None:
        raise ValueError("target_geometry needs a mask, a box or a point")
    if depth_m is None or intrinsics is None or not intrinsics.valid:
        return TargetGeometry(mask, None, None)
    depth = _check_depth(depth_m)
    sx, sy = _depth_scales(depth, image_size)
    if depth.size == 0:
        return TargetGeometry(mask, None, None)
    if mask is None and box is None:
        return _point_geometry(depth, point, intrinsics, sx, sy, point_radius)

    if mask is not None:
        found, method = _mask_grid(mask, depth, sx, sy, image_size), GeometryMethod.MASK
    else:
        box = box.clipped(*image_size)
        found = _layer(depth, box, sx, sy, layer)
        method = GeometryMethod.DEPTH_LAYER
        if found is not None:
            mask = _colour_mask(*found, sx, sy, image_size, "depth_layer")
    if found is not None:
        points, n_valid, n_masked = _points(depth, *found, intrinsics, sx, sy)
        if n_valid >= min(10, n_masked):
            shaped = _shape(points, n_valid, n_masked, method, fence)
            if shaped is not None:
                return TargetGeometry(mask, *shaped)
    if method == GeometryMethod.MASK:
        return TargetGeometry(mask, None, None)
    median = _box_median(depth, box, intrinsics, 0.5, 10, sx, sy)
    if median is None:
        return NO_GEOMETRY
    position, n_valid, n_read = median
    shape = Shape3D(extent_min=position, extent_max=position, valid_points=n_valid, valid_fraction=n_valid / n_read,
                    method=GeometryMethod.BOX_MEDIAN)
    return TargetGeometry(None, position, shape)
