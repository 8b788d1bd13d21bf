"""Scores of tracked targets against per-frame truth: the one place the tracking benchmark and harness score.

Per frame, the true objects that are visible and the tracks that are not lost are paired by the Hungarian
method on box IoU (pairs under `iou_threshold` are not pairs). Then, per true object (by its stable id):
- hit fraction: of the frames where at least `visible_fraction` of it is visible, the share where a track is
  paired with it (IoU >= iou_threshold);
- ID switches: how often the track paired with it differs from the one paired before;
- re-acquisition: after each stretch of at least `min_hidden_s` with less than `hidden_fraction` of it visible
  (occluded or out of view), the time from its first frame visible again (>= visible_fraction) to its first
  paired frame, and whether the track is the one it had before the stretch (its ID kept);
- 3-D error: distance between the paired track's position and the visible surface's centroid, where both exist;
and the update rate: the frames scored (the tracker's updates) per second of camera time.
Truth objects need `object_id`, `label`, `box` (None = not visible), `visible_fraction`, `surface_centroid`;
tracks need `track_id`, `box`, `state` (a TrackState or its value) and `position` (vlm_ros.embedded.motion's
ObjectState and vlm_ros.tracking's TrackedTarget have them).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from vlm_ros.tools.stats import percentile


@dataclass(frozen=True)
class MetricSettings:
    iou_threshold: float = 0.5
    visible_fraction: float = 0.5  # an object at least this visible should be tracked
    hidden_fraction: float = 0.05  # less visible than this: hidden (occluded or out of view)
    min_hidden_s: float = 0.3  # a hidden stretch at least this long is an occlusion to re-acquire after


@dataclass
class Reacquisition:
    hidden_s: float  # how long it was hidden
    delay_s: float  # from visible again to paired again; inf = never within the sequence
    same_id: bool | None  # paired with the track it had before; None: it was never paired before it was hidden


@dataclass
class ObjectScore:
    object_id: int
    label: str
    visible_frames: int = 0
    hit_frames: int = 0
    id_switches: int = 0
    errors_3d: list[float] = field(default_factory=list)  # metres
    reacquisitions: list[Reacquisition] = field(default_factory=list)
    track_ids: list[int] = field(default_factory=list)  # tracks it was paired with, in order

    @property
    def hit_fraction(self) -> float:
        return self.hit_frames / self.visible_frames if self.visible_frames else float("nan")


@dataclass
class TrackingScore:
    objects: list[ObjectScore]
    frames: int
    seconds: float

    @property
    def update_rate_hz(self) -> float:
        """Scored frames (tracker updates) per second of camera time."""
        return (self.frames - 1) / self.seconds if self.seconds > 0 else float("nan")

    @property
    def id_switches(self) -> int:
        return sum(o.id_switches for o in self.objects)

    @property
    def id_switches_per_300_frames(self) -> float:
        return 300.0 * self.id_switches / self.frames if self.frames else float("nan")

    @property
    def errors_3d(self) -> list[float]:
        return [e for o in self.objects for e in o.errors_3d]

    @property
    def worst_reacquisition_s(self) -> float:
        delays = [r.delay_s for o in self.objects for r in o.reacquisitions]
        return max(delays) if delays else float("nan")

    def lines(self) -> list[str]:
        out = [f"{'object':22s} {'visible':>7s} {'IoU>=.5':>8s} {'ID sw':>5s} {'3-D med/p90 cm':>15s} "
               f"{'re-acquired after hidden (s)':s}"]
        for o in self.objects:
            errors = f"{_cm(statistics.median(o.errors_3d))}/{_cm(percentile(o.errors_3d, 0.9))}" if o.errors_3d \
                else "-"
            reacq = ", ".join(f"{r.delay_s:.2f} after {r.hidden_s:.1f}{_id_note(r.same_id)}"
                              for r in o.reacquisitions) or "-"
            out.append(f"{o.label + ' #' + str(o.object_id):22s} {o.visible_frames:7d} {o.hit_fraction:8.1%} "
                       f"{o.id_switches:5d} {errors:>15s} {reacq}")
        return out


def _cm(metres: float) -> str:
    return f"{100 * metres:.1f}"


def _state(track: Any) -> str:
    return getattr(track.state, "value", track.state)


def pair_frame(truth: Sequence[Any], tracks: Sequence[Any], iou_threshold: float) -> dict[int, Any]:
    """object_id -> the track paired with it in one frame (Hungarian on IoU; lost tracks take no part)."""
    objects = [o for o in truth if o.box is not None]
    live = [t for t in tracks if _state(t) != "lost"]
    if not objects or not live:
        return {}
    iou = np.array([[o.box.iou(t.box) for t in live] for o in objects])  # (O, T)
    rows, cols = linear_sum_assignment(-iou)
    return {objects[r].object_id: live[c] for r, c in zip(rows, cols, strict=True) if iou[r, c] >= iou_threshold}


def _id_note(same_id: bool | None) -> str:
    return "" if same_id else " (new ID)" if same_id is False else " (not paired before it was hidden)"


def score_tracking(frames: Sequence[tuple[float, Sequence[Any], Sequence[Any]]],
                   settings: MetricSettings = MetricSettings()) -> TrackingScore:
    """frames: (time in seconds, true objects, tracks) per camera frame, in time order."""
    scores: dict[int, ObjectScore] = {}
    last_id: dict[int, int] = {}  # object -> the track it was last paired with
    hidden_since: dict[int, float] = {}  # object -> when its current hidden stretch began
    pending: dict[int, tuple[float, float, int | None]] = {}  # object -> (hidden for, visible again at, id before)
    for t, truth, tracks in frames:
        paired = pair_frame(truth, tracks, settings.iou_threshold)
        for o in truth:
            score = scores.setdefault(o.object_id, ObjectScore(o.object_id, o.label))
            visible = o.box is not None and o.visible_fraction >= settings.visible_fraction
            hidden = o.box is None or o.visible_fraction < settings.hidden_fraction
            track = paired.get(o.object_id)
            if hidden:
                if score.visible_frames:  # hidden after being seen (an object coming into view is not re-acquired)
                    hidden_since.setdefault(o.object_id, t)
            elif visible and o.object_id in hidden_since:  # partly visible frames still belong to the stretch
                began = hidden_since.pop(o.object_id)
                if t - began >= settings.min_hidden_s:
                    pending[o.object_id] = (t - began, t, last_id.get(o.object_id))
            if visible:
                score.visible_frames += 1
                score.hit_frames += track is not None
            if track is None:
                continue
            if o.object_id in pending:
                hidden_for, back_at, before = pending.pop(o.object_id)
                score.reacquisitions.append(Reacquisition(hidden_for, t - back_at,
                                                          None if before is None else before == track.track_id))
            if o.object_id in last_id and last_id[o.object_id] != track.track_id:
                score.id_switches += 1
            if not score.track_ids or score.track_ids[-1] != track.track_id:
                score.track_ids.append(track.track_id)
            last_id[o.object_id] = track.track_id
            if track.position is not None and o.surface_centroid is not None:
                error = math.dist(track.position, o.surface_centroid)
                if math.isfinite(error):
                    score.errors_3d.append(error)
    for object_id, (hidden_for, _, _) in pending.items():  # visible again but never paired
        scores[object_id].reacquisitions.append(Reacquisition(hidden_for, math.inf, False))
    seconds = frames[-1][0] - frames[0][0] if frames else 0.0
    return TrackingScore(sorted(scores.values(), key=lambda s: s.object_id), len(frames), seconds)
