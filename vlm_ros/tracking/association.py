"""Which new grounding is which existing track: box overlap, label and 3-D distance, solved as an assignment.

A grounding describes a frame a few frames old by the time it arrives; the caller compares it with each track as
the track was at that frame (its box history), so the overlap is not diluted by the model's latency.
Rules, per (track, detection) pair:
- the labels must be equal (case and surrounding spaces ignored): a red cube never continues a blue ball's track;
- a visible track (tracking, predicted, re-acquired) matches when the boxes overlap (IoU >= iou_gate) or, where
  both have a 3-D position, when they are within distance_gate_m; cost = (1 - IoU) + distance / distance_gate_m;
- a lost track (its box no longer known) matches by label alone, within lost_distance_gate_m where both have a
  3-D position; its cost is always above any visible track's, so a visible track keeps its detection.
The pairs are then chosen by the Hungarian method (scipy's linear_sum_assignment): the least total cost, each
track and each detection used at most once.
Whatever the labels, :func:`same_place` tells whether a detection lies where a visible track is (the tracker
takes a detection of another label there for the same object named otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from vlm_ros.core.types import Box

FORBIDDEN = 1e9  # the cost of a pair the gates refuse
LOST_COST = 3.0  # added to a lost track's cost: above any visible track's (at most 1 + 1)


@dataclass(frozen=True)
class Candidate:
    """A track or a detection as association sees it. box None: unknown (a lost track)."""

    label: str
    box: Box | None
    position: tuple[float, float, float] | None = None
    lost: bool = False


@dataclass(frozen=True)
class AssociationSettings:
    iou_gate: float = 0.3
    distance_gate_m: float = 0.15
    lost_distance_gate_m: float = 0.5


@dataclass
class Association:
    matches: list[tuple[int, int]] = field(default_factory=list)  # (track index, detection index)
    unmatched_tracks: list[int] = field(default_factory=list)
    unmatched_detections: list[int] = field(default_factory=list)


def same_label(a: str, b: str) -> bool:
    return a.strip().lower() == b.strip().lower()


def share_word(a: str, b: str) -> bool:
    """Whether two labels have a word in common (case aside; articles ignored): "blue ball", "Blue cylinder"."""
    words = [set(label.lower().split()) - {"a", "an", "the", "of"} for label in (a, b)]
    return bool(words[0] & words[1])


def _distance(a: tuple[float, float, float] | None, b: tuple[float, float, float] | None) -> float | None:
    return None if a is None or b is None else math.dist(a, b)


def pair_cost(track: Candidate, detection: Candidate, settings: AssociationSettings) -> float:
    """The cost of continuing `track` with `detection`; FORBIDDEN when a gate refuses the pair."""
    if not same_label(track.label, detection.label):
        return FORBIDDEN
    distance = _distance(track.position, detection.position)
    if track.lost or track.box is None or detection.box is None:
        if distance is None:
            return LOST_COST + 1.0
        return LOST_COST + distance / settings.lost_distance_gate_m if distance <= settings.lost_distance_gate_m \
            else FORBIDDEN
    iou = track.box.iou(detection.box)
    near = distance is not None and distance <= settings.distance_gate_m
    if iou < settings.iou_gate and not near:
        return FORBIDDEN
    return (1.0 - iou) + (0.0 if distance is None else min(distance / settings.distance_gate_m, 1.0))


def same_place(track: Candidate, detection: Candidate, settings: AssociationSettings, overlap: float) -> bool:
    """Whether `detection` lies where the visible `track` is, labels aside: their boxes overlap by `overlap`, or by
    iou_gate with both within distance_gate_m in 3-D."""
    if track.box is None or detection.box is None:
        return False
    iou, distance = track.box.iou(detection.box), _distance(track.position, detection.position)
    near = distance is not None and distance <= settings.distance_gate_m
    return iou >= overlap or (iou >= settings.iou_gate and near)


def associate(tracks: Sequence[Candidate], detections: Sequence[Candidate],
              settings: AssociationSettings = AssociationSettings()) -> Association:
    """The least-cost one-to-one pairing of tracks and detections that the gates allow."""
    result = Association()
    if tracks and detections:
        cost = np.array([[pair_cost(t, d, settings) for d in detections] for t in tracks])  # (T, D)
        rows, cols = linear_sum_assignment(cost)
        result.matches = [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if cost[r, c] < FORBIDDEN]
    matched_tracks = {t for t, _ in result.matches}
    matched_detections = {d for _, d in result.matches}
    result.unmatched_tracks = [i for i in range(len(tracks)) if i not in matched_tracks]
    result.unmatched_detections = [i for i in range(len(detections)) if i not in matched_detections]
    return result
