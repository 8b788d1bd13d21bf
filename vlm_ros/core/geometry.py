"""Pinhole geometry: CameraInfo intrinsics, back-projection and a robust 3-D point for a box.

Pixel conventions (the one place they meet):
- Boxes (core.types.Box) use *edge* coordinates: pixel column i spans [i, i + 1), so a box over the
  whole image is (0, 0, W, H) and the centre of pixel i is at i + 0.5.
- CameraInfo's K uses *centre* coordinates (OpenCV / ROS): the centre of the top-left pixel is (0, 0).
  So an edge coordinate u maps to K's pixel coordinate u - 0.5. :func:`backproject` takes K's coordinates.
Points are in the camera optical frame: x right, y down, z forward, metres.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from vlm_ros.core.types import Box, CameraIntrinsics

__all__ = ["intrinsics_from_k", "backproject", "surface_depth", "target_position"]


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


def target_position(
    depth_m: np.ndarray,
    box: Box,
    intrinsics: CameraIntrinsics | None,
    inner_fraction: float = 0.5,
    min_valid: int = 10,
    image_size: tuple[int, int] | None = None,
) -> tuple[float, float, float] | None:
    """A robust 3-D point for ``box`` from a registered depth image, or None.

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
    depth = np.asarray(depth_m)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {depth.shape}")
    if intrinsics is None or not intrinsics.valid:
        return None
    hd, wd = depth.shape
    if hd == 0 or wd == 0:
        return None
    if image_size is None:
        sx = sy = 1.0
    else:
        iw, ih = image_size
        if iw <= 0 or ih <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        sx, sy = wd / iw, hd / ih

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

    patch = np.asarray(depth[y0:y1, x0:x1], dtype=np.float64)  # (h, w)
    with np.errstate(invalid="ignore"):
        valid = patch[np.isfinite(patch) & (patch > 0)]  # (n_valid,)
    if valid.size == 0 or valid.size < min(max(min_valid, 1), patch.size):
        return None
    z = surface_depth(valid)
    point = backproject(cu - 0.5, cv - 0.5, z, intrinsics)
    return point if all(math.isfinite(c) for c in point) else None


def surface_depth(depths: np.ndarray, min_share: float = 0.2, min_gap: float = 0.05, max_samples: int = 20_000) -> float:
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
    z_near = float(np.median(near))
    if split < min_share * n or np.percentile(far, 5) - np.percentile(near, 95) <= min_gap * z_near:
        return float(np.median(depths))
    return float(np.median(depths[depths < far[0]])) if depths.size > n else z_near
