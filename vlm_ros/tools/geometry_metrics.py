"""How close a target's mask and 3-D geometry are to the renderer's truth (the evaluate tool and the regression
harness share these definitions).

Per matched target:
- mask IoU: the target's mask against the object's visible pixels (both over the whole image);
- centroid error: distance from the target's position to the visible surface's centroid (metres);
- extent error per axis (x, y, z): the larger of |min - true min| and |max - true max| of the axis-aligned
  3-D extent against the visible surface's (metres): a box of the right size in the wrong place counts;
- object-centre error: distance from the target's position to the whole object's centre (metres). A single
  view sees the front surface only, so this carries about half the object's depth.
A measure is None where the target lacks what it needs (no mask, no 3-D) or the truth lacks it (older sidecars).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vlm_ros.core.types import Mask, Target

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class GeometryTruth:
    mask: Mask | None  # the object's visible pixels
    surface_centroid: Vec3 | None
    surface_min: Vec3 | None
    surface_max: Vec3 | None
    object_center: Vec3 | None

    @classmethod
    def of(cls, obj, mask: Mask | None = None) -> GeometryTruth:
        """From a bag sidecar's ObjectTruth or a rendered SceneObject (pass its mask: Scene.object_mask)."""
        return cls(mask if mask is not None else getattr(obj, "mask", None), obj.surface_centroid, obj.surface_min,
                   obj.surface_max, obj.object_center)


@dataclass(frozen=True)
class GeometryScore:
    mask_iou: float | None
    centroid_error_m: float | None
    extent_error_m: Vec3 | None
    center_error_m: float | None


def mask_iou(a: Mask, b: Mask, width: int, height: int) -> float:
    fa, fb = a.full(width, height), b.full(width, height)
    union = np.count_nonzero(fa | fb)
    return np.count_nonzero(fa & fb) / union if union else 0.0


def score_target(target: Target, truth: GeometryTruth, width: int, height: int) -> GeometryScore:
    """The measures of one target matched to one object (see the module docstring)."""
    has_masks = target.mask is not None and truth.mask is not None
    iou = mask_iou(target.mask, truth.mask, width, height) if has_masks else None
    centroid = extent = center = None
    if target.position is not None:
        if truth.surface_centroid is not None:
            centroid = math.dist(target.position, truth.surface_centroid)
        if truth.object_center is not None:
            center = math.dist(target.position, truth.object_center)
        if target.shape is not None and truth.surface_min is not None and truth.surface_max is not None:
            extent = tuple(max(abs(lo - tlo), abs(hi - thi)) for lo, hi, tlo, thi in zip(
                target.shape.extent_min, target.shape.extent_max, truth.surface_min, truth.surface_max, strict=True))
    return GeometryScore(iou, centroid, extent, center)


def summarize(scores: Sequence[GeometryScore]) -> dict:
    """Median and worst-decile value of each measure (10th percentile of IoUs, 90th of errors) over the scores that
    have it, and how many do."""

    def stats(values: list[float], worst: str = "p90") -> dict | None:
        if not values:
            return None
        q = 10 if worst == "p10" else 90
        return {"median": float(np.median(values)), worst: float(np.percentile(values, q)), "n": len(values)}

    extents = [s.extent_error_m for s in scores if s.extent_error_m is not None]
    return {
        "targets": len(scores),
        "mask_iou": stats([s.mask_iou for s in scores if s.mask_iou is not None], "p10"),
        "centroid_error_m": stats([s.centroid_error_m for s in scores if s.centroid_error_m is not None]),
        "extent_error_m": {axis: stats([e[i] for e in extents]) for i, axis in enumerate("xyz")} if extents else None,
        "center_error_m": stats([s.center_error_m for s in scores if s.center_error_m is not None]),
    }


def summary_lines(summary: dict) -> list[str]:
    """Human-readable lines of :func:`summarize`'s result (nothing when no target had any measure)."""
    lines = []
    iou, centroid, extent, center = (summary[k] for k in ("mask_iou", "centroid_error_m", "extent_error_m",
                                                             "center_error_m"))
    n = summary["targets"]
    if iou:
        lines.append(f"mask IoU of matched targets: median {iou['median']:.3f}, p10 {iou['p10']:.3f} "
                     f"({iou['n']} of {n} with a mask)")
    if centroid:
        lines.append(f"3-D centroid error (visible surface): median {centroid['median'] * 100:.2f} cm, "
                     f"p90 {centroid['p90'] * 100:.2f} cm ({centroid['n']} of {n} with 3-D)")
    if extent:
        per_axis = ", ".join(f"{a} {extent[a]['median'] * 100:.2f}" for a in "xyz")
        lines.append(f"3-D extent error per axis (visible surface): median {per_axis} cm")
    if center:
        lines.append(f"object-centre error (the centroid vs the whole object's centre): median "
                     f"{center['median'] * 100:.2f} cm")
    return lines
