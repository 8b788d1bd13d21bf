"""Targets with stable IDs at camera rate: optical flow between VLM groundings, re-grounded periodically. No ROS.

The caller feeds every camera frame to :meth:`Tracker.update` (one thread), asks :meth:`Tracker.needs_grounding`
whether to re-ground, runs the grounding wherever it likes (the model worker) and hands the targets back with the
frame they describe to :meth:`Tracker.apply_grounding`. Each update returns one :class:`TrackedTarget` per track.

States (every change carries a reason):
- TRACKING: the flow step succeeded (vlm_ros.tracking.flow) or a grounding confirmed the box. A grounding whose
  surface lies in front of the followed target (its box takes in an occluder), or whose box covers under
  `min_box_share` of the followed one (a box cut short on a part of it), leaves the box where it is, once in a row.
- PREDICTED: the flow step failed (occlusion, too few features); the box moves on at its last velocity, for at
  most `predict_s`; the flow is tried again on the predicted box each frame.
- LOST: predicted for longer than `predict_s`, left the image (less than min_visible_fraction of its box inside,
  or predicted across a border it moves towards), not confirmed by `max_misses` groundings in a row
  (a grounding that names another label at the track's place, in the image and in 3-D, is the same object named
  otherwise: not a miss, and not a new target), a frame gap or clock jump, the camera stopped; a track not yet
  confirmed on the place of one a grounding found under its own label (the same object, first named otherwise).
  The last box is reported; nothing moves it. A grounding with the same label re-acquires the track (same ID), as
  does one with another label where the track was last seen in 3-D (within the association's distance_gate_m,
  twice that when the labels share a word); a lost track is forgotten after `forget_s`, or earlier when only one
  grounding ever found it and a new target needs its place (`max_targets`).
- RE_ACQUIRED: a predicted or lost track found again (by the flow, a grounding, or for a lost one its colours: see
  vlm_ros.tracking.colour; such a track is not yet confirmed), in the output of one update; TRACKING from the next.
A track's label is the one most of its last NAME_VOTES groundings gave it (a grounding that names it otherwise
counts), so a target first misnamed takes its name from the groundings that follow, with that reason.
A target whose grounded box reaches the image border is cut there: while it comes into view, its box keeps that
side on the border (the flow sees only what was visible), until a grounding sees its whole extent.
Nothing non-finite leaves the tracker: boxes are core.types.Box (finite by construction), positions come from
core.geometry (finite or None), velocities are checked.
"""

from __future__ import annotations

import enum
import math
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from vlm_ros.core.geometry import target_geometry
from vlm_ros.core.types import Box, Frame, Mask, Shape3D, Target
from vlm_ros.tracking.association import AssociationSettings, Candidate, associate, same_label, same_place, share_word
from vlm_ros.tracking.colour import ColourImage, ColourModel, ColourSettings, colour_model, find_by_colour
from vlm_ros.tracking.flow import DepthGate, FlowSettings, track_box

NS = 1_000_000_000
NAME_VOTES = 5  # a track takes the label most of its last this many groundings gave it


class TrackState(str, enum.Enum):
    """The values equal the STATE_* constants of msg/TrackedTarget.msg."""

    TRACKING = "tracking"
    PREDICTED = "predicted"
    LOST = "lost"
    RE_ACQUIRED = "re-acquired"


@dataclass(frozen=True)
class TrackerSettings:
    max_targets: int = 5  # tracks kept at once (new groundings beyond it are dropped; the best-scored come first)
    reground_period_s: float = 1.0  # a grounding at least this often
    min_reground_interval_s: float = 0.2  # and never more often than this (a lost target asks at every frame)
    predict_s: float = 1.0  # a predicted track becomes lost after this long without a successful flow step
    forget_s: float = 10.0  # a lost track is dropped after this long
    max_misses: int = 2  # groundings in a row that do not confirm a track -> lost
    max_frame_gap_s: float = 0.5  # a longer gap between frames (camera stopped, clock jump): flow is not trusted
    catch_up_frames: int = 10  # frames kept for a late grounding to catch up through (~ the model's latency)
    # a frame at most this much older than the last is late (dropped); more: time went back
    reorder_window_s: float = 0.5
    duplicate_iou: float = 0.5  # a grounding overlapping a better one of its label, or a track, this much: a repeat
    renamed_iou: float = 0.8  # ... a better one of another label this much: one object named twice (its first name)
    min_visible_fraction: float = 0.3  # less of the box inside the image: the target left it
    min_box_share: float = 0.5  # a grounding's box under this share of a followed one's area is on a part of it
    depth_tolerance_m: float = 0.06  # least depth gate half-width (the target's own depth spread widens it)
    box_from_mask: bool = True  # a grounded target with a mask is followed from its mask's extent, not the model's box
    min_mask_depth_px: int = 8  # ... when the mask spans at least this many depth pixels each way (a coarser one,
    # over a depth image of low resolution, misses the object's thin parts: the model's box is nearer the truth)
    flow: FlowSettings = field(default_factory=FlowSettings)
    association: AssociationSettings = field(default_factory=AssociationSettings)
    colour: ColourSettings | None = field(default_factory=ColourSettings)  # None: lost tracks are not looked for
    # by their colours (vlm_ros.tracking.colour)


@dataclass(frozen=True)
class TrackedTarget:
    """One track at one frame: what the Track action's feedback and ~/tracks carry."""

    track_id: int
    label: str
    state: TrackState
    reason: str
    box: Box  # clipped to the image; a lost track's last known box
    confidence: float  # the last flow step's confidence (1.0 right after a grounding), 0 when predicted or lost
    stamp_ns: int  # of the frame this describes
    age_s: float  # since the grounding that last confirmed the track (frame time)
    position: tuple[float, float, float] | None = None  # camera optical frame, metres; None = unknown
    shape: Shape3D | None = None
    mask: Mask | None = None


@dataclass
class _Track:
    track_id: int
    label: str
    box: Box  # unclipped
    state: TrackState
    reason: str
    confirmed_ns: int
    seen_ns: int  # last frame the target was seen (flow or grounding)
    confidence: float = 1.0
    velocity: tuple[float, float] = (0.0, 0.0)  # box centre, pixels per second
    mask_patch: np.ndarray | None = None  # (h, w) bool over the box, from the grounding's mask
    gate: DepthGate | None = None
    position: tuple[float, float, float] | None = None
    shape: Shape3D | None = None
    mask: Mask | None = None
    misses: int = 0
    groundings: int = 1  # groundings that found it (the first included)
    names: deque = field(default_factory=lambda: deque(maxlen=NAME_VOTES))  # the labels the last groundings gave it
    confirmed: bool = False  # a grounding found it again under its own label (a new one, or one re-acquired under
    # another name, is not yet: the next grounding is asked for soon)
    cut: tuple[bool, bool, bool, bool] = (False, False, False, False)  # sides (left, top, right, bottom) where the
    # grounding's box reached the image border: the object went on beyond it
    history: deque = field(default_factory=lambda: deque(maxlen=120))  # (stamp_ns, box, position) from that frame on;
    # box None: lost
    colour: ColourModel | None = None  # taken when a grounding starts it or finds it again, in full view
    found_by_colour: bool = False  # re-acquired by its colours since a grounding last found it under its label
    box_kept: bool = False  # the last grounding that found it was doubted (Tracker._box_doubt): its box was kept
    shown: bool = True  # its state has been in an update's output

    def set_state(self, state: TrackState, reason: str) -> None:
        self.state, self.reason, self.shown = state, reason, self.shown and state == self.state


class Tracker:
    """Follows grounded targets from frame to frame; ROS-free, single-threaded (one caller at a time)."""

    def __init__(self, settings: TrackerSettings = TrackerSettings()):
        self.settings = settings
        self.tracks: list[_Track] = []
        self.drops: Counter[str] = Counter()  # frames not used, by reason
        self._next_id = 1
        # the last frames with their grey images: [-1] is the previous frame of the next update; the older ones let
        # a late grounding catch up with the present (flow from its frame to the newest)
        self._recent: deque[tuple[Frame, np.ndarray]] = deque(maxlen=max(1, settings.catch_up_frames))
        self._colours: tuple[Frame, ColourImage] | None = None  # the last frame's colour image
        self._last_grounding_ns: int | None = None  # stamp of the frame of the last grounding asked for
        self._last_stamp_ns: int | None = None
        self._size: tuple[int, int] | None = None  # (width, height) of the last frame: output boxes are clipped to it

    # --- frames -----------------------------------------------------------------------------------------------
    def update(self, frame: Frame) -> list[TrackedTarget] | None:
        """Move every track to this frame. None when the frame is not used (late: out of order); see `drops`."""
        s = self.settings
        stamp = frame.stamp_ns
        size = (frame.width, frame.height)
        lost = {t.track_id for t in self.tracks if t.state == TrackState.LOST}  # before this frame (loss shown)
        if self._recent:
            prev = self._recent[-1][0]
            gap_ns = stamp - prev.stamp_ns
            if gap_ns <= 0 and -gap_ns <= s.reorder_window_s * NS:
                self.drops["out of order"] += 1
                return None
            if gap_ns <= 0:
                self._lose_all(f"clock jumped back by {-gap_ns / NS:.2f} s")
            elif gap_ns > s.max_frame_gap_s * NS:
                self._lose_all(f"no frame for {gap_ns / NS:.2f} s (camera stopped or clock jump)")
            elif size != (prev.width, prev.height):
                self._lose_all(f"image size changed from {prev.width}x{prev.height} to {size[0]}x{size[1]}")
        for track in self.tracks:  # a re-acquisition is shown in one update's output
            if track.state == TrackState.RE_ACQUIRED and track.shown:
                track.set_state(TrackState.TRACKING, track.reason)
        gray = cv2.cvtColor(frame.image, cv2.COLOR_RGB2GRAY)  # (H, W) uint8
        if self._recent:
            for track in self.tracks:
                if track.state != TrackState.LOST:
                    self._step(track, self._recent[-1], (frame, gray))
        self._recent.append((frame, gray))
        self._last_stamp_ns, self._size = stamp, size
        self._place_by_colour(lost, frame)
        self._forget(stamp)
        tracked = self.snapshot()
        for track in self.tracks:
            track.shown = True
        return tracked

    def camera_stopped(self, silent_s: float) -> None:
        """The caller saw no frame for `silent_s` seconds: every track not yet lost is lost, with that reason."""
        self._lose_all(f"camera stopped: no frame for {silent_s:.2f} s")

    def _lose_all(self, reason: str) -> None:
        """Every track not yet lost is lost; the frames kept are dropped (nothing flows across the break)."""
        self._recent.clear()
        for track in self.tracks:
            if track.state != TrackState.LOST:
                track.set_state(TrackState.LOST, reason)
                track.confidence = 0.0

    def _forget(self, stamp: int) -> None:
        self.tracks = [t for t in self.tracks
                       if t.state != TrackState.LOST or stamp - t.seen_ns <= self.settings.forget_s * NS]

    def _step(self, track: _Track, before: tuple[Frame, np.ndarray], after: tuple[Frame, np.ndarray]) -> None:
        """Move one track from the frame `before` to the frame `after` (each with its grey image)."""
        s = self.settings
        (prev, prev_gray), (frame, gray) = before, after
        stamp, dt = frame.stamp_ns, (frame.stamp_ns - prev.stamp_ns) / NS
        width, height = frame.width, frame.height
        feature_mask = self._feature_mask(track, width, height)
        step = track_box(prev_gray, gray, track.box, s.flow, prev_depth=prev.depth, next_depth=frame.depth,
                         gate=track.gate, feature_mask=feature_mask)
        if step.box is None and feature_mask is not None:  # the mask may have drifted off the target: the whole box
            step = track_box(prev_gray, gray, track.box, s.flow, prev_depth=prev.depth, next_depth=frame.depth,
                             gate=track.gate)
        if step.box is not None:
            vx, vy = ((a - b) / dt for a, b in zip(step.box.center, track.box.center, strict=True))
            if math.isfinite(vx) and math.isfinite(vy):
                track.velocity = (0.5 * track.velocity[0] + 0.5 * vx, 0.5 * track.velocity[1] + 0.5 * vy)
            recovered = track.state in (TrackState.PREDICTED, TrackState.LOST)
            track.box = _to_cut_border(step.box, track.cut, width, height)
            track.confidence, track.seen_ns = step.confidence, stamp
            if recovered:
                track.set_state(TrackState.RE_ACQUIRED, "found again by optical flow")
            elif track.state != TrackState.RE_ACQUIRED:  # one not yet shown stays so for this update
                track.set_state(TrackState.TRACKING, "")
            if track.gate is not None and step.depth_m is not None:
                track.gate = replace(track.gate, depth_m=step.depth_m)
        else:
            track.confidence = 0.0
            if track.state != TrackState.PREDICTED:
                track.set_state(TrackState.PREDICTED, f"flow failed: {step.reason}")
            if stamp - track.seen_ns > s.predict_s * NS:
                track.set_state(TrackState.LOST, f"not seen for {(stamp - track.seen_ns) / NS:.2f} s ({step.reason})")
            else:
                shift_x, shift_y = track.velocity[0] * dt, track.velocity[1] * dt
                track.box = Box(track.box.x_min + shift_x, track.box.y_min + shift_y,
                                track.box.x_max + shift_x, track.box.y_max + shift_y)
        visible = track.box.clipped(width, height)
        # predicted across a border it moves towards: leaving (the flow would find what it leaves behind there)
        leaving = track.state == TrackState.PREDICTED and _moving_out(track.box, track.velocity, width, height)
        if track.state != TrackState.LOST and (leaving or visible.area < s.min_visible_fraction * track.box.area):
            track.set_state(TrackState.LOST, "left the image")
            track.confidence = 0.0
            track.found_by_colour = False  # its colours, if they found it, were not refuted: they may find it again
        if track.state != TrackState.LOST:
            # a predicted target is not seen: its box region shows an occluder, so its 3-D position stays the last seen
            self._locate(track, frame, measure=track.state != TrackState.PREDICTED)
            track.history.append((stamp, track.box, track.position))

    def _feature_mask(self, track: _Track, width: int, height: int) -> np.ndarray | None:
        """(H, W) uint8 of the previous frame's target mask, eroded so that its border's background is left out."""
        if track.mask is None:
            return None
        full = track.mask.full(width, height).astype(np.uint8)
        return cv2.erode(full, np.ones((5, 5), np.uint8))

    def _locate(self, track: _Track, frame: Frame, measure: bool) -> None:
        """The track's mask (the grounding's, moved and scaled with the box) and, when `measure`, its 3-D geometry
        in this frame."""
        track.mask = _placed_mask(track.mask_patch, track.box, frame.width, frame.height)
        if not measure:
            return
        if frame.depth is None or frame.intrinsics is None:
            track.position = track.shape = None
            return
        kwargs = ({"mask": track.mask} if track.mask is not None
                  else {"box": track.box.clipped(frame.width, frame.height)})
        geometry = target_geometry(frame.depth, frame.intrinsics, (frame.width, frame.height), **kwargs)
        gate = track.gate
        if gate is not None and geometry.position is not None \
                and abs(geometry.position[2] - gate.depth_m) > gate.tolerance_m:
            return  # the surface under the mask is off the target's depth (an occluder in front): the last one stays
        track.position, track.shape = geometry.position, geometry.shape

    def _place_by_colour(self, lost_ids: set[int], frame: Frame) -> None:
        """Tracks placed by their colours (vlm_ros.tracking.colour): a track lost before this frame (`lost_ids`) found
        again is re-acquired there, not yet confirmed, so that the next grounding is asked for soon; until a grounding
        finds it, its colours place it in each frame, near where the flow took it (what comes into view is taken
        in). A track its colours found is not looked for again while lost until a grounding has found it, or it has
        left the image (its colours were not refuted)."""
        s = self.settings
        placed = [t for t in self.tracks if t.colour is not None and t.found_by_colour and not t.confirmed
                  and t.state != TrackState.LOST]
        lost = [t for t in self.tracks if t.colour is not None and not t.found_by_colour
                and t.state == TrackState.LOST and t.track_id in lost_ids]
        if s.colour is None or not placed + lost:
            return
        image = self._colour_image(frame)
        for track in placed + lost:
            others = [t.box for t in self.tracks if t.state != TrackState.LOST and t is not track]
            was_lost = track.state == TrackState.LOST
            mask = find_by_colour(image, track.colour, others, near=None if was_lost else track.box.grown(0.5))
            if mask is None:
                continue
            box = mask.extent()  # the mask is cropped to its pixels: its patch
            # its 3-D geometry from the depth layer of the region's box: the colour mask's thin parts (a star's arms)
            # fall on the background behind in a coarser depth image
            geometry = target_geometry(frame.depth, frame.intrinsics, (frame.width, frame.height), box=box)
            if track.position is not None and geometry.position is not None \
                    and math.dist(track.position, geometry.position) > s.association.lost_distance_gate_m:
                continue
            before = track.state, track.reason, track.shown, track.confirmed_ns
            self._restart(track, Target(track.label, box, position=geometry.position, mask=mask, shape=geometry.shape),
                          frame, (0.0, 0.0))
            track.confirmed, track.found_by_colour, track.confirmed_ns = False, True, before[3]
            if was_lost:
                track.set_state(TrackState.RE_ACQUIRED, "found again by its colours (not yet confirmed by a grounding)")
            else:
                track.state, track.reason, track.shown = before[:3]

    # --- groundings -------------------------------------------------------------------------------------------
    def needs_grounding(self, stamp_ns: int | None = None) -> str:
        """Why a grounding is due now ("" = not due): none yet, the period elapsed, or a track predicted, lost or not
        yet confirmed (new, or re-acquired under another name)."""
        s = self.settings
        stamp = self._last_stamp_ns if stamp_ns is None else stamp_ns
        if stamp is None:
            return ""
        last = self._last_grounding_ns
        if last is not None and 0 <= stamp - last < s.min_reground_interval_s * NS:
            return ""
        if last is None or not self.tracks:
            return "first grounding" if last is None else "no target yet"
        if stamp < last or stamp - last >= s.reground_period_s * NS:
            return "period"
        for t in self.tracks:
            if t.state in (TrackState.PREDICTED, TrackState.LOST):
                return f"track {t.track_id} {t.state.value}"
            if not t.confirmed:
                return f"track {t.track_id} not yet confirmed"
        return ""

    def grounding_started(self, stamp_ns: int) -> None:
        """The caller asked the model for a grounding of the frame at `stamp_ns` (rate-limits needs_grounding)."""
        self._last_grounding_ns = stamp_ns

    def apply_grounding(self, targets: Sequence[Target], frame: Frame) -> list[TrackedTarget]:
        """Merge a grounding of `frame` (which may be a few frames old): confirm, re-acquire or start tracks."""
        s = self.settings
        if s.box_from_mask:
            depth_px = frame.width / frame.depth.shape[1] if frame.depth is not None else 1.0  # image pixels a side
            targets = [_mask_boxed(t, s.min_mask_depth_px * depth_px) for t in targets]
        targets = [t for t in targets if t.box is not None]
        targets = self._distinct(sorted(targets, key=lambda t: -t.score))
        detections = [Candidate(t.label, t.box, t.position) for t in targets]
        then = [self._at(track, frame.stamp_ns) for track in self.tracks]
        found = associate([c for c, _ in then], detections, s.association)
        for ti, di in found.matches:
            self._found(self.tracks[ti], targets[di], frame, then[ti])
        # an unmatched detection with another label on a visible track's place, or (in 3-D) where a lost track was
        # last seen: that object named otherwise (a model's answer on a partly visible object varies); neither a new
        # target nor a miss of the track; a lost track is re-acquired by it
        seen: set[int] = set()  # tracks this grounding named otherwise, or found to be another's twin: no miss
        renaming: set[int] = set()  # the detections that named them
        for di in found.unmatched_detections:
            places = {ti for ti, (c, _) in enumerate(then) if same_place(c, detections[di], s.association,
                                                                          s.duplicate_iou)}
            if places:
                for ti in places & set(found.unmatched_tracks) - seen:  # not also found under its own label
                    self._name(self.tracks[ti], targets[di].label)
            elif (lost := self._lost_near(detections[di], set(found.unmatched_tracks) - seen)) is not None:
                self._found(self.tracks[lost], targets[di], frame, then[lost])
                places = {lost}
            else:
                continue
            seen |= places
            renaming.add(di)
        # a track not yet confirmed on the place of one this grounding found under its own label: that object, which
        # a grounding named otherwise when it was partly visible (one object, two tracks otherwise)
        for ti in set(found.unmatched_tracks) - seen:
            track = self.tracks[ti]
            if track.confirmed or track.state == TrackState.LOST:
                continue
            twin = next((self.tracks[tj] for tj, _ in found.matches if self.tracks[tj].state != TrackState.PREDICTED
                         and same_place(_now(self.tracks[tj]), _now(track), s.association, s.duplicate_iou)), None)
            if twin is not None:
                track.set_state(TrackState.LOST, f"the same object as track {twin.track_id} ('{twin.label}')")
                track.confidence = 0.0
                seen.add(ti)
        for ti in found.unmatched_tracks:
            track = self.tracks[ti]
            if track.state == TrackState.LOST or ti in seen:
                continue
            track.misses += 1
            if track.misses >= s.max_misses:
                track.set_state(TrackState.LOST, f"not confirmed by {track.misses} groundings in a row")
                track.confidence = 0.0
        for di in found.unmatched_detections:
            target = targets[di]
            if di in renaming:
                self.drops["grounding on another track's place (label differs)"] += 1
                continue
            if len(self.tracks) >= s.max_targets and not self._forget_a_lost_track():
                self.drops["grounding beyond max_targets"] += 1
                continue
            track = _Track(self._next_id, target.label, target.box, TrackState.TRACKING, "new grounding",
                           confirmed_ns=frame.stamp_ns, seen_ns=frame.stamp_ns)
            self._next_id += 1
            track.names.append(target.label)
            self._restart(track, target, frame, (0.0, 0.0))
            self._take_colours(track, target, frame)
            self.tracks.append(track)
        return self.snapshot()

    def _found(self, track: _Track, target: Target, frame: Frame,
               then: tuple[Candidate, tuple[float, float]]) -> None:
        """A grounding found `track` as `target` (its label, or another where the track was lost): restart it there.
        `then`: the track as of the grounding's frame and its shift since (Tracker._at)."""
        was, own_label = track.state, same_label(target.label, track.label)
        track.groundings += 1
        track.found_by_colour = track.found_by_colour and not own_label
        doubt = self._box_doubt(track, target, then[0].box)
        track.box_kept = bool(doubt)
        if doubt:
            # the track is kept where it is, its confirmation unchanged (one not yet confirmed still asks for the next
            # grounding soon; asking so after every doubt took the CPU from the flow over DDS: star 79-94 % of frames
            # on the committed bag against 81-94 %); the next such grounding moves it (the track's own depth or box
            # may be the wrong one)
            track.misses, track.confirmed_ns = 0, frame.stamp_ns
            if track.state == TrackState.TRACKING:
                track.set_state(TrackState.TRACKING, f"confirmed by grounding; its box kept ({doubt})")
            self._name(track, target.label)
            return
        track.confirmed = own_label
        self._restart(track, target, frame, then[1])
        if own_label and was != TrackState.LOST:
            self._take_colours(track, target, frame)
        if track.state in (TrackState.PREDICTED, TrackState.LOST):  # the catch-up flow lost it again
            pass
        elif was in (TrackState.PREDICTED, TrackState.LOST):
            named = "" if own_label else f" as '{target.label}'"
            track.set_state(TrackState.RE_ACQUIRED, f"re-acquired by grounding{named} (was {was.value})")
        else:
            track.set_state(TrackState.TRACKING, "confirmed by grounding")
        self._name(track, target.label)

    def _box_doubt(self, track: _Track, target: Target, followed: Box | None) -> str:
        """Why a grounding that found a followed track should leave its box where it is, once in a row ('' = none):
        the surface under the grounding's box lies in front of the target (an occluder the model's box takes in, on a
        partly hidden object), or the box covers under min_box_share of `followed`, the track's box as of the
        grounding's frame (a model's box cut short)."""
        if track.state not in (TrackState.TRACKING, TrackState.RE_ACQUIRED) or track.box_kept or followed is None:
            return ""
        gate = track.gate
        if gate is not None and target.position is not None and target.position[2] < gate.depth_m - gate.tolerance_m:
            return f"the grounding's surface is {gate.depth_m - target.position[2]:.2f} m in front of the target: an " \
                   "occluder"
        if target.box.area < self.settings.min_box_share * followed.area:
            return f"the grounding's box covers {target.box.area / followed.area:.0%} of the followed one: a part of it"
        return ""

    def _take_colours(self, track: _Track, target: Target, frame: Frame) -> None:
        """Keep the colour model of a target a grounding started, or found again under its label where the track was
        (not one re-acquired from lost: the model's box may be elsewhere), in full view (not cut by the border)."""
        if self.settings.colour is not None and not any(track.cut):
            track.colour = colour_model(self._colour_image(frame), target.box, target.mask) or track.colour

    def _colour_image(self, frame: Frame) -> ColourImage:
        """The frame's reduced HSV image, made once per frame (for every track a grounding or an update looks at)."""
        if self._colours is None or self._colours[0] is not frame:
            self._colours = (frame, ColourImage(frame.image, self.settings.colour))
        return self._colours[1]

    def _name(self, track: _Track, label: str) -> None:
        """A grounding gave `track` this label: it takes the label most of its last NAME_VOTES groundings gave it."""
        track.names.append(label)
        votes = Counter(track.names)
        best, n = votes.most_common(1)[0]
        if n > votes[track.label]:
            track.reason = f"named '{best}' by {n} of the last {len(track.names)} groundings (was '{track.label}')"
            track.label = best

    def _lost_near(self, detection: Candidate, candidates: set[int]) -> int | None:
        """The lost track among `candidates` last seen nearest `detection` in 3-D: within distance_gate_m, or twice
        that when the labels share a word ("blue cylinder", "blue ball": the depth under a partly visible object's box
        is partly its occluder's). None: none, or no depth."""
        if detection.position is None:
            return None
        gate = self.settings.association.distance_gate_m
        near = []
        for ti in sorted(candidates):
            track = self.tracks[ti]
            if track.state == TrackState.LOST and track.position is not None:
                distance = math.dist(track.position, detection.position)
                if distance <= gate * (2 if share_word(track.label, detection.label) else 1):
                    near.append((distance, ti))
        return min(near, default=(None, None))[1]

    def _forget_a_lost_track(self) -> bool:
        """Make room for a new target by dropping a lost track that only one grounding ever found (a misdetection
        or a misnamed object, which would otherwise hold its place among max_targets for forget_s): first one that
        groundings refuted in view, then one that went out of sight (it may come back); the one lost longest. An
        object found again and again keeps its place while lost, to be re-identified when it comes back. False if
        there is no such track."""
        once = [t for t in self.tracks if t.state == TrackState.LOST and t.groundings == 1]
        if not once:
            return False
        self.tracks.remove(min(once, key=lambda t: (t.misses < self.settings.max_misses, t.seen_ns)))
        return True

    def _distinct(self, targets: list[Target]) -> list[Target]:
        """The targets without repeats: one overlapping a better-scored one of its label by duplicate_iou, or of
        another label by renamed_iou (a model unsure of an object's name may give its box twice), is dropped."""
        s = self.settings
        kept: list[Target] = []
        for target in targets:
            if any(k.box.iou(target.box) >= (s.duplicate_iou if same_label(k.label, target.label) else s.renamed_iou)
                   for k in kept):
                self.drops["repeated grounding"] += 1
            else:
                kept.append(target)
        return kept

    def _at(self, track: _Track, stamp_ns: int) -> tuple[Candidate, tuple[float, float]]:
        """The track as it was at stamp_ns (from its history) and its box centre's shift since then."""
        if track.state == TrackState.LOST:
            return Candidate(track.label, None, track.position, lost=True), (0.0, 0.0)
        box, position = track.box, track.position
        for stamp, old_box, old_position in reversed(track.history):
            if stamp <= stamp_ns:
                if old_box is not None:  # None: it was lost then, its place unknown (compared where it is now)
                    box, position = old_box, old_position
                break
        shift = (track.box.center[0] - box.center[0], track.box.center[1] - box.center[1])
        return Candidate(track.label, box, position), shift

    def _restart(self, track: _Track, target: Target, frame: Frame, shift: tuple[float, float]) -> None:
        """Take the grounding's box, mask, depth gate and 3-D position, as of its frame, then bring the track to the
        newest frame: by the flow through the frames kept since (catch-up), else (its frame is no longer kept) by
        `shift`, how far the track moved since that frame."""
        while track.history and track.history[-1][0] >= frame.stamp_ns:  # its past before the frame stays: a later
            track.history.pop()  # grounding of an earlier frame is compared with it
        if track.state == TrackState.LOST and track.seen_ns + 1 < frame.stamp_ns:  # unknown from the frame after it
            track.history.append((track.seen_ns + 1, None, None))  # was last seen
        track.box, track.confidence, track.misses = target.box, 1.0, 0
        track.cut = _cut_sides(target.box, frame.width, frame.height)
        track.confirmed_ns = track.seen_ns = frame.stamp_ns
        track.velocity = track.velocity if track.state == TrackState.TRACKING else (0.0, 0.0)
        track.mask_patch = _box_patch(target.mask, target.box) if target.mask is not None else None
        track.gate = self._gate(target, frame)
        track.position, track.shape = target.position, target.shape
        track.mask = _placed_mask(track.mask_patch, target.box, frame.width, frame.height)
        track.set_state(TrackState.TRACKING, "")
        track.history.append((frame.stamp_ns, target.box, track.position))
        stamps = [f.stamp_ns for f, _ in self._recent]
        if frame.stamp_ns in stamps:
            start = stamps.index(frame.stamp_ns)
            for j in range(start + 1, len(self._recent)):
                self._step(track, self._recent[j - 1], self._recent[j])
                if track.state == TrackState.LOST:
                    break
        elif shift != (0.0, 0.0):
            b = target.box
            track.box = Box(b.x_min + shift[0], b.y_min + shift[1], b.x_max + shift[0], b.y_max + shift[1])

    def _gate(self, target: Target, frame: Frame) -> DepthGate | None:
        """The target's surface depth (median under its mask, else its 3-D position) and spread, for the flow."""
        if frame.depth is None or target.position is None:
            return None
        depth_m, spread = target.position[2], 0.0
        if target.shape is not None:
            spread = target.shape.extent_max[2] - target.shape.extent_min[2]
        return DepthGate(depth_m, max(self.settings.depth_tolerance_m, spread))

    # --- output -----------------------------------------------------------------------------------------------
    def snapshot(self) -> list[TrackedTarget]:
        """Every track as of the last frame."""
        stamp = self._last_stamp_ns or 0
        return [TrackedTarget(t.track_id, t.label, t.state, t.reason,
                              t.box.clipped(*self._size) if self._size is not None else t.box, t.confidence, stamp,
                              max(0.0, (stamp - t.confirmed_ns) / NS), t.position, t.shape, t.mask)
                for t in self.tracks]


def _now(track: _Track) -> Candidate:
    return Candidate(track.label, track.box, track.position)


def _mask_boxed(target: Target, min_size_px: float) -> Target:
    """The target with its mask's extent as its box (a model's box is looser or cuts the object short; the
    depth-layer mask follows the object's visible surface); unchanged without a box or a mask, with an empty mask,
    or one whose extent is under `min_size_px` either way."""
    extent = target.mask.extent() if target.mask is not None and target.box is not None else None
    if extent is None or min(extent.width, extent.height) < min_size_px:
        return target
    return replace(target, box=extent)


def _moving_out(box: Box, velocity: tuple[float, float], width: int, height: int) -> bool:
    """Whether `box` reaches past a border of the image and `velocity` (pixels per second) points across it."""
    vx, vy = velocity
    return (box.x_min < 0 and vx < 0) or (box.x_max > width and vx > 0) or (box.y_min < 0 and vy < 0) \
        or (box.y_max > height and vy > 0)


def _cut_sides(box: Box, width: int, height: int, margin_px: float = 2.0) -> tuple[bool, bool, bool, bool]:
    """Which sides (left, top, right, bottom) of `box` reach the image border (within margin_px)."""
    return (box.x_min <= margin_px, box.y_min <= margin_px, box.x_max >= width - margin_px,
            box.y_max >= height - margin_px)


def _to_cut_border(box: Box, cut: tuple[bool, bool, bool, bool], width: int, height: int) -> Box:
    """`box` with each cut side that moved into the image put back on the border: an object coming into view
    still reaches the border (what it showed was cut there), until a grounding sees its whole extent."""
    left, top, right, bottom = cut
    return Box(min(box.x_min, 0.0) if left else box.x_min, min(box.y_min, 0.0) if top else box.y_min,
               max(box.x_max, width) if right else box.x_max, max(box.y_max, height) if bottom else box.y_max)


def _box_patch(mask: Mask, box: Box) -> np.ndarray:
    """The mask's pixels over the box's pixel grid, (h, w) bool (outside the mask's patch: False)."""
    x0, y0 = int(box.x_min), int(box.y_min)
    w, h = max(1, int(math.ceil(box.x_max)) - x0), max(1, int(math.ceil(box.y_max)) - y0)
    patch = np.zeros((h, w), bool)
    dx, dy = mask.x0 - x0, mask.y0 - y0
    src = mask.data
    ys, xs = slice(max(0, -dy), min(src.shape[0], h - dy)), slice(max(0, -dx), min(src.shape[1], w - dx))
    if ys.start < ys.stop and xs.start < xs.stop:
        patch[ys.start + dy:ys.stop + dy, xs.start + dx:xs.stop + dx] = src[ys, xs]
    return patch


def _placed_mask(patch: np.ndarray | None, box: Box, width: int, height: int) -> Mask | None:
    """`patch` scaled to `box` and clipped to the image; None when there is no patch or nothing of it is inside."""
    if patch is None:
        return None
    x0, y0 = int(round(box.x_min)), int(round(box.y_min))
    w, h = max(1, int(round(box.width))), max(1, int(round(box.height)))
    scaled = cv2.resize(patch.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)  # (h, w)
    cx0, cy0 = max(0, x0), max(0, y0)
    cx1, cy1 = min(width, x0 + w), min(height, y0 + h)
    if cx1 <= cx0 or cy1 <= cy0:
        return None
    return Mask(cx0, cy0, np.ascontiguousarray(scaled[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]), "tracked")
