"""The grounding stage: from a model's answer to targets a planner can act on (ROS-free).

For a GROUND request, the boxes come from the VLM itself (families that emit coordinates) or from an
open-vocabulary detector (OWLv2, OWL-ViT, Grounding DINO) that boxes the objects named by the instruction, else
by the VLM's answer; `GroundingSettings.mode` chooses per node: auto (the VLM where its family can ground, the
detector otherwise), vlm, or detector. Each box target then gets a mask from a box-prompted segmenter (SAM,
SAM 2, EdgeTAM) when one is set, else from the VLM's own polygons where its family has them (Florence-2's
referring-expression segmentation), else none here (3-D geometry then uses the depth layer inside the box).

Everything a detector, a segmenter or a polygon returns is untrusted: validated, and dropped and counted by
reason when bad (`Grounder.drops`). Work per query is bounded: at most `max_targets` targets, one segmenter
call, at most MAX_POLYGON_QUERIES polygon generations. A query never ends with an unexplained empty target list:
the notes returned with the targets say why there are none.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from vlm_ros.core.geometry import target_geometry
from vlm_ros.core.types import Box, Frame, Mask, Request, Target, Task, Timings
from vlm_ros.models.parsing import box_or_reason, clean_label
from vlm_ros.models.phrases import grounding_phrases, object_phrases

__all__ = ["GROUNDING_MODES", "Grounded", "Grounder", "GroundingSettings", "naming_question"]

log = logging.getLogger(__name__)

GROUNDING_MODES = ("auto", "vlm", "detector")
MAX_POLYGON_QUERIES = 4  # polygon generations per query (one per distinct label)
POLYGON_MAX_NEW_TOKENS = 256  # token budget of one polygon generation
DETECTOR_BOX_MARGIN = 0.5  # detector corners further than this fraction of the image outside it: "out of range"
MAX_LABEL_LEN = 64
MAX_INSPECTED = 1000  # detector outputs looked at per query (a flood beyond is counted, not read)


@dataclass(frozen=True)
class GroundingSettings:
    """The node parameters of the grounding stage (grounding_detector, grounding, ..., segmenter, max_targets)."""

    detector: str = ""  # local OWLv2 / OWL-ViT / Grounding DINO directory; "" = none
    mode: str = "auto"  # auto | vlm | detector
    detector_threshold: float = 0.0  # detector score threshold; 0 = the detector family's default
    segmenter: str = ""  # local SAM / SAM 2 / EdgeTAM directory; "" = none
    max_targets: int = 20  # targets per answer (detections, segmenter prompts)

    # node parameter name -> field
    PARAMETERS: ClassVar[dict[str, str]] = {"grounding": "mode", "grounding_detector": "detector",
                                            "grounding_detector_threshold": "detector_threshold",
                                            "segmenter": "segmenter", "max_targets": "max_targets"}

    @classmethod
    def from_params(cls, get: Callable[[str], Any]) -> GroundingSettings:
        """From a getter of parameter values by name (the node's)."""
        return cls(**{field_name: get(name) for name, field_name in cls.PARAMETERS.items()})

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every setting's default by parameter name (the node's parameter table takes its defaults from here)."""
        return {name: getattr(cls(), field_name) for name, field_name in cls.PARAMETERS.items()}

    def __post_init__(self) -> None:
        if self.mode not in GROUNDING_MODES:
            raise ValueError(f"grounding must be one of {', '.join(GROUNDING_MODES)}; got '{self.mode}'")
        if self.mode == "detector" and not self.detector:
            raise ValueError("grounding 'detector' needs grounding_detector (a detector model directory)")
        if not (math.isfinite(self.detector_threshold) and 0.0 <= self.detector_threshold < 1.0):
            raise ValueError(f"grounding_detector_threshold must be in [0, 1); got {self.detector_threshold}")
        if not 1 <= self.max_targets <= 100:
            raise ValueError(f"max_targets must be in [1, 100]; got {self.max_targets}")


@dataclass
class Grounded:
    """The grounding stage's result for one answer: targets, notes for the answer's message (why there are none,
    what was dropped), and whether the deadline cut grounding work short (the answer is then TIMEOUT)."""

    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cut_by_deadline: bool = False

    def stop_for_deadline(self, deadline: float, what: str) -> bool:
        """True (and noted) when the deadline has passed before `what`."""
        if time.monotonic() < deadline:
            return False
        self.cut_by_deadline = True
        self.notes.append(f"deadline reached before {what}")
        return True


class Detector(Protocol):
    """What the grounding stage needs of a detector (vlm_ros.models.detector.OpenVocabularyDetector)."""

    def detect(self, frame: Frame, phrases: list[str], threshold: float | None = None, *,
               max_detections: int = 100) -> Sequence[tuple[str, float, Any]]: ...


class Segmenter(Protocol):
    """What the grounding stage needs of a segmenter (vlm_ros.models.segmenter.BoxSegmenter)."""

    def segment(self, frame: Frame, boxes: list[Box]) -> Sequence[np.ndarray]: ...


def naming_question(instruction: str) -> str:
    """The question a VLM answers for a grounding request that a detector boxes: it names the objects meant.

    Families without coordinates would otherwise get the bare phrase ("red mug") as their question."""
    phrases = object_phrases(instruction)
    if phrases:
        return f"Where is the {' and the '.join(phrases)} in the image? Name each one you see."
    instruction = " ".join(instruction.split()).rstrip(" ?.!")
    if instruction:
        return f"{instruction}? Name the objects in the image that this refers to."
    return "Name the objects in the image."


class Grounder:
    """Boxes, points and masks for one answer; holds the optional detector and segmenter. One query at a time."""

    def __init__(self, settings: GroundingSettings | None = None, detector: Detector | None = None,
                 segmenter: Segmenter | None = None):
        self.settings = settings or GroundingSettings()
        self.detector = detector
        self.segmenter = segmenter
        self.drops: collections.Counter[str] = collections.Counter()  # dropped outputs by reason, since start

    @classmethod
    def load(cls, settings: GroundingSettings, device: str = "cpu", dtype=None,
             log_info: Callable[[str], None] = log.info) -> Grounder:
        """Load the detector and segmenter the settings name (local directories; nothing is fetched)."""
        detector = segmenter = None
        if settings.detector:
            from vlm_ros.models.detector import OpenVocabularyDetector

            t0 = time.monotonic()
            detector = OpenVocabularyDetector.from_pretrained(settings.detector, device=device, dtype=dtype)
            log_info(f"grounding detector {detector.family} loaded from {settings.detector} in "
                     f"{time.monotonic() - t0:.1f} s (grounding: {settings.mode})")
        if settings.segmenter:
            from vlm_ros.models.segmenter import BoxSegmenter

            t0 = time.monotonic()
            segmenter = BoxSegmenter.from_pretrained(settings.segmenter, device=device, dtype=dtype)
            log_info(f"segmenter {segmenter.family} loaded from {settings.segmenter} in {time.monotonic() - t0:.1f} s")
        return cls(settings, detector, segmenter)

    def uses_detector(self, adapter) -> bool:
        """Whether the detector boxes this node's grounding requests (else the VLM's own output does)."""
        if self.detector is None:
            return False
        return self.settings.mode == "detector" or (self.settings.mode == "auto" and not adapter.can_ground)

    def vlm_request(self, request: Request, adapter) -> Request:
        """The request the VLM answers: a grounding request the detector boxes asks the VLM to name the objects."""
        if request.task != Task.GROUND or not self.uses_detector(adapter):
            return request
        return Request(Task.ANSWER, naming_question(request.instruction), request.max_new_tokens, request.timeout_s)

    # --- targets ----------------------------------------------------------------------------------------
    def targets(self, frame: Frame, request: Request, parsed, adapter, *, timings: Timings, deadline: float,
                polygons: Callable[[str], Any] | None = None) -> Grounded:
        """Targets for one answer (boxes or points, masks, 3-D) with notes for the answer's message.

        parsed: the adapter's ParsedAnswer of the VLM's text. polygons(label) -> PolygonResult runs the VLM's
        polygon prompt for a label, or returns None when its family has none.
        """
        out = Grounded()
        if request.task == Task.GROUND and self.uses_detector(adapter):
            out.targets = self._detect(frame, request, parsed.text, timings, deadline, out)
        else:
            out.targets = [Target(label=label, box=box) for label, box in parsed.boxes]
            out.targets += [Target(label=label, box=None, point=point) for label, point in parsed.points]
            if request.task == Task.GROUND and not out.targets:
                out.notes.append(self._why_no_vlm_targets(adapter, parsed))
        if len(out.targets) > self.settings.max_targets:
            extra = len(out.targets) - self.settings.max_targets
            self.drops["too many targets"] += extra
            out.notes.append(f"{extra} targets beyond max_targets={self.settings.max_targets} dropped")
            out.targets = out.targets[: self.settings.max_targets]
        t0 = time.perf_counter()
        if any(t.box is not None for t in out.targets):
            if self.segmenter is not None:
                self._segment(frame, out)
            elif polygons is not None:
                self._polygon_masks(frame, polygons, deadline, out)
        without_3d = sum(not _geometry(frame, t) for t in out.targets)
        if without_3d:
            self.drops["no 3-D (no valid depth under the target)"] += without_3d
            out.notes.append(f"{without_3d} targets without 3-D: no valid depth under them")
        timings.segment = time.perf_counter() - t0
        return out

    def _why_no_vlm_targets(self, adapter, parsed) -> str:
        family = getattr(adapter, "family", "this model")
        if not adapter.can_ground:
            if self.detector is not None:  # mode vlm
                return (f"grounding is 'vlm' but {family} emits no boxes: set grounding to auto or detector to box "
                        f"with grounding_detector")
            return (f"{family} emits no boxes and no detector is set: set grounding_detector to an OWLv2, OWL-ViT or "
                    f"Grounding DINO model directory to box the objects it names")
        return f"the model's answer has no {'parseable ' if parsed.dropped else ''}box or point"

    def _detect(self, frame: Frame, request: Request, answer: str, timings: Timings, deadline: float,
                out: Grounded) -> list[Target]:
        phrases = grounding_phrases(request.instruction, answer)
        if not phrases:
            out.notes.append("no object named in the instruction or the answer for the detector to box")
            return []
        if out.stop_for_deadline(deadline, "the detector ran"):
            return []
        threshold = self.settings.detector_threshold or None
        t0 = time.perf_counter()
        try:
            raw = self.detector.detect(frame, phrases, threshold, max_detections=self.settings.max_targets)
        except Exception as exc:  # noqa: BLE001 -- third-party model code: report, count, keep serving
            self.drops["detector failure"] += 1
            out.notes.append(f"the detector failed: {type(exc).__name__}: {exc}"[:200])
            return []
        finally:
            timings.ground = time.perf_counter() - t0
        targets = self._valid_detections(raw, frame, out.notes)
        if not targets:
            shown = ", ".join(phrases)
            limit = threshold if threshold is not None else "family default"
            out.notes.append(f"the detector found none of [{shown}] above its threshold ({limit}; "
                             "grounding_detector_threshold)")
        return targets

    def _valid_detections(self, raw, frame: Frame, notes: list[str]) -> list[Target]:
        """Detector output -> box targets, best first: a string label, a finite score, corners inside the image
        (overshoot up to DETECTOR_BOX_MARGIN clipped), at least a pixel wide and high; everything else counted."""
        entries = list(itertools.islice(raw, MAX_INSPECTED))
        good: list[Target] = []
        bad: collections.Counter[str] = collections.Counter()
        for entry in entries:
            target, reason = _detection_target(entry, frame)
            if target is None:
                bad[reason] += 1
            else:
                good.append(target)
        if hasattr(raw, "__len__") and len(raw) > len(entries):
            bad["too many"] += len(raw) - len(entries)
        if bad:
            self.drops["detector box"] += sum(bad.values())
            reasons = ", ".join(f"{n} {r}" for r, n in bad.most_common())
            notes.append(f"{sum(bad.values())} detector boxes dropped ({reasons})")
        good.sort(key=lambda t: -t.score)
        return good

    # --- masks ------------------------------------------------------------------------------------------
    def _segment(self, frame: Frame, out: Grounded) -> None:
        """One segmenter call for all box targets; each valid mask is cropped to its box (source "segmenter")."""
        notes = out.notes
        boxed = [t for t in out.targets if t.box is not None]
        try:
            masks = list(self.segmenter.segment(frame, [t.box for t in boxed]))
        except Exception as exc:  # noqa: BLE001 -- third-party model code: report, count, keep serving
            self.drops["segmenter failure"] += 1
            notes.append(f"the segmenter failed ({type(exc).__name__}: {exc}"[:160] + "); no segmenter masks")
            return
        if len(masks) != len(boxed):
            self.drops["segmenter mask"] += len(boxed)
            notes.append(f"the segmenter returned {len(masks)} masks for {len(boxed)} boxes; none used")
            return
        dropped = 0
        for target, mask in zip(boxed, masks, strict=True):
            target.mask = _box_mask(mask, target.box, frame, "segmenter")
            dropped += target.mask is None
        if dropped:
            self.drops["segmenter mask"] += dropped
            notes.append(f"{dropped} segmenter masks dropped (wrong shape or empty inside the box)")

    def _polygon_masks(self, frame: Frame, polygons: Callable[[str], Any], deadline: float, out: Grounded) -> None:
        """The VLM's own polygons for each distinct label (source "polygon"); the mask goes to the target of that
        label whose box holds most of it."""
        notes, targets = out.notes, out.targets
        labels = list(dict.fromkeys(t.label for t in targets if t.box is not None))
        if len(labels) > MAX_POLYGON_QUERIES:
            notes.append(f"polygons for the first {MAX_POLYGON_QUERIES} of {len(labels)} labels only")
        dropped = 0
        for label in labels[:MAX_POLYGON_QUERIES]:
            if out.stop_for_deadline(deadline, "all polygons were generated"):
                break
            try:
                result = polygons(label)
            except Exception as exc:  # noqa: BLE001 -- model code: report, count, keep serving
                self.drops["polygon failure"] += 1
                notes.append(f"polygon generation failed: {type(exc).__name__}: {exc}"[:160])
                break
            if result is None:  # the family has no polygon output
                return
            dropped += len(result.dropped)
            full = _rasterise_polygons(result.polygons, frame.width, frame.height)
            if full is None:
                continue
            same = [t for t in targets if t.label == label and t.box is not None]
            best = max(same, key=lambda t: _pixels_inside(full, t.box))
            best.mask = _box_mask(full, best.box, frame, "polygon")
            dropped += best.mask is None
        if dropped:
            self.drops["polygon"] += dropped
            notes.append(f"{dropped} polygon outputs dropped")


# --- pure helpers ---------------------------------------------------------------------------------------


def _detection_target(entry, frame: Frame) -> tuple[Target | None, str]:
    """One detector output (label, score, Box or 4 corners) -> a box target, or (None, reason)."""
    try:
        label, score, corners = entry
        if isinstance(corners, Box):
            corners = (corners.x_min, corners.y_min, corners.x_max, corners.y_max)
        x1, y1, x2, y2 = (float(v) for v in corners)
        score = float(score)
    except (TypeError, ValueError):
        return None, "malformed"
    if not isinstance(label, str):
        return None, "malformed"
    if not math.isfinite(score):
        return None, "non-finite"
    box, reason = box_or_reason(x1, y1, x2, y2, frame.width, frame.height, DETECTOR_BOX_MARGIN)
    if box is None:
        return None, reason
    if box.width < 1.0 or box.height < 1.0:
        return None, "degenerate"
    label = clean_label(label[: 8 * MAX_LABEL_LEN])[:MAX_LABEL_LEN]
    return Target(label=label, box=box, score=score), ""


def _box_pixels(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """Integer pixel bounds [x0, x1) x [y0, y1) covering a box, inside the image."""
    x0, y0 = max(0, math.floor(box.x_min)), max(0, math.floor(box.y_min))
    x1, y1 = min(width, math.ceil(box.x_max)), min(height, math.ceil(box.y_max))
    return x0, y0, x1, y1


def _box_mask(full: np.ndarray, box: Box, frame: Frame, source: str) -> Mask | None:
    """A full-frame mask cropped to the target's box, or None when it is malformed or empty there."""
    mask = np.asarray(full)
    if mask.shape != (frame.height, frame.width) or mask.dtype.kind not in "biuf":
        return None
    x0, y0, x1, y1 = _box_pixels(box, frame.width, frame.height)
    region = mask[y0:y1, x0:x1]
    # a float mask is a probability map: NaN or below one half is background (astype(bool) would make NaN True)
    patch = np.nan_to_num(region, nan=0.0) > 0.5 if mask.dtype.kind == "f" else region.astype(bool)
    if not patch.any():
        return None
    return Mask(x0, y0, np.ascontiguousarray(patch), source)


def _pixels_inside(full: np.ndarray, box: Box) -> int:
    x0, y0, x1, y1 = _box_pixels(box, full.shape[1], full.shape[0])
    return int(full[y0:y1, x0:x1].sum())


def _rasterise_polygons(polygons: list[np.ndarray], width: int, height: int) -> np.ndarray | None:
    """The union of polygons (each (K, 2) x, y in source edge coordinates) as a (height, width) bool mask, or None
    when nothing is filled. Vertices must be finite and inside the image (the parsers guarantee it)."""
    import cv2

    canvas = np.zeros((height, width), np.uint8)
    good = [np.round(np.asarray(p, np.float64) - 0.5).astype(np.int32) for p in polygons
            if len(p) >= 3 and np.isfinite(p).all()]  # edge -> pixel-centre coordinates
    if not good:
        return None
    cv2.fillPoly(canvas, good, 1)
    return canvas.astype(bool) if canvas.any() else None


def _geometry(frame: Frame, target: Target) -> bool:
    """Mask (the depth layer where none is given), 3-D position and Shape3D of a target from the frame's depth.
    False when the frame has depth and intrinsics but the target got no 3-D position (counted by the caller)."""
    geometry = target_geometry(frame.depth, frame.intrinsics, (frame.width, frame.height), box=target.box,
                               mask=target.mask, point=target.point)
    target.mask, target.position, target.shape = geometry
    return target.position is not None or frame.depth is None or frame.intrinsics is None
