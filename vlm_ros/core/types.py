"""Typed values that flow through the core: frames in, answers with grounded targets out.

Pixel boxes are always in the *source image* (the camera image as published), never in a model's
resized input. 3-D points are in the camera optical frame (x right, y down, z forward), in metres.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

import numpy as np


class Status(enum.IntEnum):
    """Result codes; the values equal the constants in srv/Query.srv."""

    OK = 0
    NOT_READY = 1
    NO_FRAME = 2
    STALE_FRAME = 3
    INVALID_ARGUMENT = 4
    BUSY = 5
    TIMEOUT = 6
    MODEL_ERROR = 7


class Task(str, enum.Enum):
    DESCRIBE = "describe"  # a scene description
    ANSWER = "answer"  # a free-form answer to a question
    GROUND = "ground"  # boxes for the objects the instruction refers to


@dataclass(frozen=True)
class Box:
    """Axis-aligned box in pixels, (x_min, y_min) top-left inclusive, (x_max, y_max) exclusive."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float

    def __post_init__(self) -> None:
        values = (self.x_min, self.y_min, self.x_max, self.y_max)
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"box has a non-finite coordinate: {values}")
        if self.x_max < self.x_min or self.y_max < self.y_min:
            raise ValueError(f"box corners are inverted: {values}")

    @property
    def width(self) -> float:
        return self.x_max - self.x_min

    @property
    def height(self) -> float:
        return self.y_max - self.y_min

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def center(self) -> tuple[float, float]:
        return (self.x_min + self.x_max) / 2.0, (self.y_min + self.y_max) / 2.0

    def iou(self, other: Box) -> float:
        ix = max(0.0, min(self.x_max, other.x_max) - max(self.x_min, other.x_min))
        iy = max(0.0, min(self.y_max, other.y_max) - max(self.y_min, other.y_min))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def grown(self, fraction: float) -> Box:
        """This box grown on each side by `fraction` of its width (left, right) and height (top, bottom)."""
        dx, dy = fraction * self.width, fraction * self.height
        return Box(self.x_min - dx, self.y_min - dy, self.x_max + dx, self.y_max + dy)

    def clipped(self, width: int, height: int) -> Box:
        """This box clipped to an image of the given size."""
        return Box(
            min(max(self.x_min, 0.0), width),
            min(max(self.y_min, 0.0), height),
            min(max(self.x_max, 0.0), width),
            min(max(self.y_max, 0.0), height),
        )


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of the (rectified) image, from CameraInfo.k."""

    fx: float
    fy: float
    cx: float
    cy: float

    @property
    def valid(self) -> bool:
        return all(math.isfinite(v) for v in (self.fx, self.fy, self.cx, self.cy)) and self.fx > 0 and self.fy > 0


@dataclass
class Frame:
    """One camera image, decoded, with what is known about it.

    image: (H, W, 3) uint8 RGB. depth: (Hd, Wd) float32 metres with NaN where invalid, registered to the image
    (same field of view; it may have another resolution). intrinsics: of the colour image.
    """

    image: np.ndarray
    stamp_ns: int = 0
    frame_id: str = ""
    camera: str = ""
    intrinsics: CameraIntrinsics | None = None
    depth: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(f"frame image must be (H, W, 3) uint8 RGB, got {self.image.shape} {self.image.dtype}")
        if self.depth is not None and self.depth.ndim != 2:
            raise ValueError(f"depth must be (H, W), got {self.depth.shape}")

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


@dataclass(frozen=True)
class Request:
    task: Task
    instruction: str = ""
    max_new_tokens: int = 64
    timeout_s: float = 10.0


def _finite(values) -> bool:
    return all(math.isfinite(float(v)) for v in values)


@dataclass(frozen=True)
class Mask:
    """Which pixels of the source image belong to a target: a boolean patch placed at (x0, y0).

    data: (h, w) bool, True = object; it covers source-image pixels [x0, x0 + w) x [y0, y0 + h) (usually the
    target's box). source: what produced it: "segmenter" (a box-prompted segmentation model), "polygon" (the
    VLM's own polygons, Florence-2) or "depth_layer" (the object's depth layer inside the box, model-free).
    """

    x0: int
    y0: int
    data: np.ndarray
    source: str

    def __post_init__(self) -> None:
        if self.data.ndim != 2 or self.data.dtype != np.bool_:
            raise ValueError(f"mask data must be (h, w) bool, got {self.data.shape} {self.data.dtype}")
        if self.x0 < 0 or self.y0 < 0:
            raise ValueError(f"mask origin must be inside the image, got ({self.x0}, {self.y0})")

    @property
    def area(self) -> int:
        return int(self.data.sum())

    def full(self, width: int, height: int) -> np.ndarray:
        """(height, width) bool mask of the whole image (the patch clipped to it)."""
        out = np.zeros((height, width), dtype=bool)
        h = max(0, min(self.data.shape[0], height - self.y0))
        w = max(0, min(self.data.shape[1], width - self.x0))
        out[self.y0:self.y0 + h, self.x0:self.x0 + w] = self.data[:h, :w]
        return out

    def extent(self) -> Box | None:
        """The box of its True pixels (source-image edge coordinates); None when it has none."""
        rows, cols = np.nonzero(self.data.any(axis=1))[0], np.nonzero(self.data.any(axis=0))[0]
        if rows.size == 0:
            return None
        return Box(float(self.x0 + cols[0]), float(self.y0 + rows[0]), float(self.x0 + cols[-1] + 1),
                   float(self.y0 + rows[-1] + 1))

    def cropped(self) -> Mask | None:
        """The same pixels with the patch cropped to them; None when it has none."""
        box = self.extent()
        if box is None:
            return None
        x0, y0, x1, y1 = (int(v) for v in (box.x_min, box.y_min, box.x_max, box.y_max))
        data = self.data[y0 - self.y0:y1 - self.y0, x0 - self.x0:x1 - self.x0]
        return Mask(x0, y0, np.ascontiguousarray(data), self.source)


class GeometryMethod(str, enum.Enum):
    """How a target's 3-D geometry was computed (GroundedTarget.msg carries the value)."""

    MASK = "mask"  # the valid depth points under a segmentation mask (segmenter or polygons)
    DEPTH_LAYER = "depth_layer"  # the valid depth points of the object's depth layer inside the box
    BOX_MEDIAN = "box_median"  # the box centre's ray at the robust depth of the box's central part
    POINT = "point"  # a 2-D point answer: the ray through the point at the depth around it


@dataclass(frozen=True)
class Shape3D:
    """What depth shows of a target, in the camera optical frame (metres).

    extent_min / extent_max: the axis-aligned box of the valid points used (a single view sees the object's
    front surface only: its depth extent is that surface's). valid_points: how many depth points were used;
    valid_fraction: their share of the pixels considered (mask, or box region).
    """

    extent_min: tuple[float, float, float]
    extent_max: tuple[float, float, float]
    valid_points: int
    valid_fraction: float
    method: GeometryMethod

    def __post_init__(self) -> None:
        if not _finite(self.extent_min + self.extent_max + (self.valid_fraction,)):
            raise ValueError("target extent must be finite")

    @property
    def size(self) -> tuple[float, float, float]:
        return tuple(hi - lo for lo, hi in zip(self.extent_min, self.extent_max, strict=True))  # type: ignore[return-value]


@dataclass
class Target:
    """One grounded object. A box target has `box`; a point target (a model that answers with points) has `point`
    and no box. position: the 3-D point a planner acts on (camera optical frame, metres): the centroid of the valid
    depth points used (see `shape.method`), None = unknown. All fields are finite whenever set."""

    label: str
    box: Box | None
    score: float = 1.0
    position: tuple[float, float, float] | None = None
    point: tuple[float, float] | None = None  # source-image pixels (edge coordinates, like Box)
    mask: Mask | None = None
    shape: Shape3D | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.score):
            raise ValueError("target score must be finite")
        if self.box is None and self.point is None:
            raise ValueError("a target needs a box or a point")
        if self.position is not None and not _finite(self.position):
            raise ValueError("target position must be finite (use None for unknown)")
        if self.point is not None and not _finite(self.point):
            raise ValueError("target point must be finite")


@dataclass
class Timings:
    """Seconds spent in each stage of one query."""

    queue_wait: float = 0.0
    preprocess: float = 0.0
    vision_encode: float = 0.0
    prefill: float = 0.0
    decode: float = 0.0
    ground: float = 0.0  # open-vocabulary detector boxing what the VLM named (0 when not used)
    segment: float = 0.0  # masks and 3-D geometry of the targets

    @property
    def total(self) -> float:
        return (self.queue_wait + self.preprocess + self.vision_encode + self.prefill + self.decode + self.ground
                + self.segment)


@dataclass
class Answer:
    status: Status
    message: str = ""
    text: str = ""
    targets: list[Target] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)
    generated_tokens: int = 0
