"""Frame-to-frame box propagation: pyramidal Lucas-Kanade optical flow on features inside the box, with depth.

Why this tracker. It has to follow up to a handful of targets at camera rate on one CPU core, between VLM
re-groundings, for any object the VLM names (no class-specific model). Candidates and their cost here:
- pyramidal Lucas-Kanade (OpenCV, built in): a small pyramid of the region around each box, then ~40
  points per target: 0.8-1.4 ms of one core per target at 640x480 (objects 55-150 px wide); any object with
  some texture or edges.
- OpenCV's single-object trackers (MIL built in; KCF/CSRT need opencv-contrib): one model per target; MIL took
  23-27 ms of one core per target and frame here (same frames), so three targets miss 30 Hz; no notion of depth.
- SAM 2 / EdgeTAM video models (transformers): masks of high quality, but a large image encoder per frame: the GPU
  path for later, not a one-core tracker.
Lucas-Kanade alone follows whatever moves in the box: an occluder passing in front, or the background at the
object's border. Two checks keep it honest: a forward-backward check (each point tracked back must land within
`fb_max_error_px` of where it started; the share that does is the step's confidence), and, where depth exists, a
depth gate (a point whose depth differs from the target's surface by more than the tolerance is not on the target:
background, or an occluder in front). Too few points left -> the step fails with the reason, and the tracker
predicts, then declares the target lost, until a re-grounding confirms it again.
The box moves by the median shift of the points that pass and scales with their depth (before / after: a pinhole
image scales as 1 / depth), or without depth by the median ratio of their pairwise distances.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from vlm_ros.core.types import Box


@dataclass(frozen=True)
class FlowSettings:
    max_features: int = 40  # corners sought per target
    min_features: int = 5  # fewer points surviving the checks: the step fails
    corner_quality: float = 0.002  # of the box's strongest corner: low, so that plain surfaces keep some points
    fb_max_error_px: float = 1.0  # forward-backward error above which a point is dropped
    window_px: int = 15  # Lucas-Kanade window
    pyramid_levels: int = 3
    max_scale_step: float = 1.1  # a box never grows or shrinks by more than this per frame
    min_box_px: float = 3.0  # a box narrower or lower than this has collapsed
    search_px: int = 24  # least margin around the box that the flow searches


@dataclass(frozen=True)
class DepthGate:
    """The target's surface depth (metres) and how far from it a point may lie and still be on the target."""

    depth_m: float
    tolerance_m: float


@dataclass(frozen=True)
class FlowStep:
    """One target's move from the previous frame to this one. box None = the step failed (see reason)."""

    box: Box | None
    confidence: float  # share of the sought points that passed every check, 0..1
    points: int  # points that passed
    reason: str  # why it failed, or "" when it did not
    depth_m: float | None = None  # median depth of the passing points in this frame, None = no depth


def depth_at(depth: np.ndarray | None, points: np.ndarray, image_size: tuple[int, int]) -> np.ndarray | None:
    """Depth (metres, NaN = none) under each point (N, 2) given in colour-image edge coordinates; None without depth.

    Depth is registered to the colour image and may have another resolution (core.geometry's convention)."""
    if depth is None:
        return None
    width, height = image_size
    sx, sy = depth.shape[1] / width, depth.shape[0] / height
    cols = np.clip((points[:, 0] * sx).astype(np.int64), 0, depth.shape[1] - 1)  # (N,)
    rows = np.clip((points[:, 1] * sy).astype(np.int64), 0, depth.shape[0] - 1)
    values = depth[rows, cols].astype(np.float64)
    values[~(values > 0)] = np.nan  # 0, negative and NaN depths are invalid (inf stays: it is compared, never used)
    return values


def _on_target(depths: np.ndarray | None, gate: DepthGate | None) -> np.ndarray | None:
    """(N,) bool: points whose depth is within the gate; None when there is nothing to gate with."""
    if depths is None or gate is None:
        return None
    with np.errstate(invalid="ignore"):
        return np.abs(depths - gate.depth_m) <= gate.tolerance_m


def track_box(prev_gray: np.ndarray, next_gray: np.ndarray, box: Box, settings: FlowSettings, *,
              prev_depth: np.ndarray | None = None, next_depth: np.ndarray | None = None,
              gate: DepthGate | None = None, feature_mask: np.ndarray | None = None) -> FlowStep:
    """Move `box` (edge coordinates, may reach past the image) from the previous frame to the next one.

    prev_gray / next_gray: (H, W) uint8 images. prev_depth / next_depth: (Hd, Wd) metres registered to the
    images, or None. gate: the target's surface depth, or None. feature_mask: (H, W) uint8 of the previous frame,
    non-zero where features may be taken (the target's mask), or None = anywhere inside the box.
    """
    height, width = prev_gray.shape[:2]
    inner = box.clipped(width, height)
    x0, y0, x1, y1 = int(inner.x_min), int(inner.y_min), int(math.ceil(inner.x_max)), int(math.ceil(inner.y_max))
    if x1 - x0 < settings.min_box_px or y1 - y0 < settings.min_box_px:
        return FlowStep(None, 0.0, 0, "box is outside the image")
    roi_mask = None if feature_mask is None else np.ascontiguousarray(feature_mask[y0:y1, x0:x1])
    corners = cv2.goodFeaturesToTrack(prev_gray[y0:y1, x0:x1], settings.max_features, settings.corner_quality, 3,
                                      mask=roi_mask)
    if corners is None:
        return FlowStep(None, 0.0, 0, "no features in the box")
    start = corners.reshape(-1, 2) + np.array([x0, y0], np.float32)  # (N, 2) pixel coordinates
    sought = len(start)
    prev_depths = depth_at(prev_depth, start + 0.5, (width, height))
    keep = _on_target(prev_depths, gate)
    if keep is not None:
        start, prev_depths = start[keep], prev_depths[keep]
    if len(start) < settings.min_features:
        return FlowStep(None, len(start) / sought, len(start),
                        f"{len(start)} features on the target's depth in the box (background or occluder)")

    # Lucas-Kanade on a region around the box (its pyramid is built per call: the Python binding takes no
    # prebuilt pyramid), large enough for the search: the box plus its own size, at least `search_px`, each side
    mx, my = max(settings.search_px, x1 - x0), max(settings.search_px, y1 - y0)
    rx0, ry0, rx1, ry1 = max(0, x0 - mx), max(0, y0 - my), min(width, x1 + mx), min(height, y1 + my)
    prev_roi, next_roi = prev_gray[ry0:ry1, rx0:rx1], next_gray[ry0:ry1, rx0:rx1]
    offset = np.array([rx0, ry0], np.float32)
    points = (start - offset).astype(np.float32)  # (N, 2) region pixels
    win = (settings.window_px, settings.window_px)
    level = settings.pyramid_levels
    moved, ok_fwd, _ = cv2.calcOpticalFlowPyrLK(prev_roi, next_roi, points.reshape(-1, 1, 2), None,
                                                winSize=win, maxLevel=level)
    back, ok_bwd, _ = cv2.calcOpticalFlowPyrLK(next_roi, prev_roi, moved, None, winSize=win, maxLevel=level)
    moved, back = moved.reshape(-1, 2), back.reshape(-1, 2)  # (N, 2)
    good = ok_fwd.ravel().astype(bool) & ok_bwd.ravel().astype(bool) & np.isfinite(moved).all(axis=1)
    good &= np.linalg.norm(back - points, axis=1) <= settings.fb_max_error_px
    moved = moved + offset  # (N, 2) image pixels
    next_depths = depth_at(next_depth, moved + 0.5, (width, height))
    on_target = _on_target(next_depths, gate)
    if on_target is not None:
        good &= on_target
    n = int(good.sum())
    confidence = n / sought
    if n < settings.min_features:
        reason = "points failed the forward-backward check" if on_target is None else \
            "points failed the forward-backward or depth check (occluded?)"
        return FlowStep(None, confidence, n, f"{n} of {sought} {reason}")

    a, b = start[good], moved[good]  # (n, 2)
    shift = np.median(b - a, axis=0)  # (2,)
    scale = _depth_scale(prev_depths, next_depths, good) if gate is not None else None
    scale = _median_scale(a, b) if scale is None else scale
    scale = min(max(scale, 1.0 / settings.max_scale_step), settings.max_scale_step)
    cx, cy = box.center
    half_w, half_h = box.width * scale / 2.0, box.height * scale / 2.0
    cx, cy = cx + float(shift[0]), cy + float(shift[1])
    values = (cx - half_w, cy - half_h, cx + half_w, cy + half_h)
    if not all(math.isfinite(v) for v in values):
        return FlowStep(None, confidence, n, "non-finite box from the flow")
    if 2 * half_w < settings.min_box_px or 2 * half_h < settings.min_box_px:
        return FlowStep(None, confidence, n, "box collapsed")
    depth_m = None
    if next_depths is not None:
        valid = next_depths[good]
        valid = valid[np.isfinite(valid)]
        depth_m = float(np.median(valid)) if len(valid) else None
    return FlowStep(Box(*values), confidence, n, "", depth_m)


def _depth_scale(before: np.ndarray | None, after: np.ndarray | None, used: np.ndarray) -> float | None:
    """How much the target grew in the image: its depth before / after (a pinhole image scales as 1 / depth);
    None without depth. before / after: (N,) depths of the points, used: (N,) bool."""
    if before is None or after is None:
        return None
    with np.errstate(invalid="ignore"):
        z0, z1 = np.nanmedian(before[used]), np.nanmedian(after[used])
    return float(z0 / z1) if np.isfinite(z0) and np.isfinite(z1) and z0 > 0 and z1 > 0 else None


def _median_scale(a: np.ndarray, b: np.ndarray) -> float:
    """Median ratio of pairwise distances after / before (1.0 when it cannot be told). a, b: (n, 2)."""
    i, j = np.triu_indices(len(a), k=1)
    before = np.linalg.norm(a[i] - a[j], axis=1)
    after = np.linalg.norm(b[i] - b[j], axis=1)
    usable = before > 2.0  # points closer than this give noisy ratios
    if not usable.any():
        return 1.0
    scale = float(np.median(after[usable] / before[usable]))
    return scale if math.isfinite(scale) and scale > 0 else 1.0
