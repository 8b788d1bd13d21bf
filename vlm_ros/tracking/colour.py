"""Finding a lost target again by its colours: a hue-saturation histogram back-projected on the frame. No ROS.

When a grounding finds a target in full view, the tracker keeps its colour model (:func:`colour_model`): the hue-
saturation histogram of its pixels (under its mask, else the central half of its box; pixels too grey or too dark to
have a hue are left out) and how many pixels of those colours it showed; none when another region of the image has
those colours in a size that could pass for it (two red objects: colour cannot tell them apart). While the target is
lost (out of view, behind an occluder), :func:`find_by_colour` looks for it in each frame: the connected regions of
pixels whose colours the model makes likely, on the image reduced SCALE times; a region showing from `min_shown` to
`max_shown` times the target's pixels, mostly outside every visible track's box, is the target coming back (the
tracker also asks it to lie within the association's lost_distance_gate_m in 3-D of where the target was last seen).
Colour is weak evidence: the tracker takes such a region as not yet confirmed and asks for a grounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from vlm_ros.core.types import Box, Mask

SCALE = 4  # the search runs on the image reduced this many times each way
BINS = (30, 32)  # hue (0-180), saturation (0-256)
RANGES = [0, 180, 0, 256]
MIN_SAMPLE = 50  # coloured pixels of the target, at least, for a colour model


@dataclass(frozen=True)
class ColourSettings:
    min_saturation: int = 60  # a pixel with less saturation (0-255) has no reliable hue: grey, white
    min_value: int = 40  # ... or with less value: dark
    min_coloured: float = 0.3  # a target with fewer of its pixels coloured has no colour model
    likely: float = 0.2  # a pixel is of the target's colours when its histogram bin holds this share of the peak
    min_shown: float = 0.4  # a region with fewer of the target's pixels (its count in full view) is not it
    max_shown: float = 2.5  # nor one with more (a larger surface of those colours)


@dataclass(frozen=True)
class ColourModel:
    histogram: np.ndarray  # BINS float32, peak 255
    pixels: int  # the target's pixels of likely colour in full view (reduced image)


class ColourImage:
    """A frame reduced SCALE times, in HSV, with the pixels that have a hue: computed once per frame."""

    def __init__(self, image: np.ndarray, settings: ColourSettings):
        """image: (H, W, 3) uint8 RGB."""
        height, width = image.shape[:2]
        small = cv2.resize(image, (max(1, width // SCALE), max(1, height // SCALE)), interpolation=cv2.INTER_AREA)
        self.image, self.settings = image, settings
        self.hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)  # (h, w, 3) uint8
        self.coloured = self.has_hue(self.hsv)  # (h, w) bool

    def has_hue(self, hsv: np.ndarray) -> np.ndarray:
        """(h, w) bool: the pixels of `hsv` saturated and bright enough to have a hue."""
        return (hsv[..., 1] >= self.settings.min_saturation) & (hsv[..., 2] >= self.settings.min_value)

    def likely(self, model: ColourModel, hsv: np.ndarray | None = None) -> np.ndarray:
        """(h, w) bool: the pixels of the reduced image (or of `hsv`) whose colours the model makes likely."""
        coloured = self.coloured if hsv is None else self.has_hue(hsv)
        back = cv2.calcBackProject([self.hsv if hsv is None else hsv], [0, 1], model.histogram, RANGES, 1)
        return (back >= self.settings.likely * 255) & coloured

    def likely_near(self, model: ColourModel, x: int, y: int, w: int, h: int) -> Mask | None:
        """The likely pixels, at full resolution, of the reduced image's region (x, y, w, h) grown by a pixel."""
        height, width = self.image.shape[:2]
        x0, y0 = max(0, (x - 1) * SCALE), max(0, (y - 1) * SCALE)
        x1, y1 = min(width, (x + w + 1) * SCALE), min(height, (y + h + 1) * SCALE)
        likely = self.likely(model, cv2.cvtColor(self.image[y0:y1, x0:x1], cv2.COLOR_RGB2HSV))
        return Mask(x0, y0, likely, "colour").cropped()


def _reduced(box: Box, shape: tuple[int, int]) -> tuple[slice, slice]:
    h, w = shape
    x0, x1 = max(0, int(box.x_min // SCALE)), min(w, int(-(-box.x_max // SCALE)))
    y0, y1 = max(0, int(box.y_min // SCALE)), min(h, int(-(-box.y_max // SCALE)))
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


def _rect(shape: tuple[int, int], box: Box, x0: int, y0: int) -> np.ndarray:
    """(h, w) bool of `shape`, True inside `box` (image pixels) for a window whose corner is at (x0, y0)."""
    out = np.zeros(shape, bool)
    out[max(0, int(box.y_min) - y0):max(0, int(box.y_max) - y0),
        max(0, int(box.x_min) - x0):max(0, int(box.x_max) - x0)] = True
    return out


def colour_model(image: ColourImage, box: Box, mask: Mask | None) -> ColourModel | None:
    """The colour model of the target at `box` (image pixels) with its mask; None when too few of its pixels are
    coloured, or when its colours are not its own in this image (another region of them could pass for it).

    The histogram is taken at full resolution and keeps the colours the target (its mask, else the central half of
    its box) shows more than twice as often as the ring around its box does: the table or wall its mask or box takes
    in are not its colours."""
    height, width = image.image.shape[:2]
    window = box.grown(0.5)
    x0, y0 = max(0, int(window.x_min)), max(0, int(window.y_min))
    x1, y1 = min(width, int(window.x_max) + 1), min(height, int(window.y_max) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    hsv = cv2.cvtColor(image.image[y0:y1, x0:x1], cv2.COLOR_RGB2HSV)
    coloured = image.has_hue(hsv)
    inside = _rect(coloured.shape, box, x0, y0)
    if mask is not None:
        target = mask.full(width, height)[y0:y1, x0:x1] & inside
    else:
        target = _rect(coloured.shape, box.grown(-0.25), x0, y0)  # its central half
    shown = int((target & coloured).sum())
    if shown < MIN_SAMPLE or shown < image.settings.min_coloured * target.sum():
        return None
    ring = ~inside
    own = cv2.calcHist([hsv], [0, 1], (target & coloured).astype(np.uint8), list(BINS), RANGES) / shown
    around = cv2.calcHist([hsv], [0, 1], (ring & coloured).astype(np.uint8), list(BINS), RANGES) / max(1, ring.sum())
    histogram = np.where(own > 2 * around, own, 0).astype(np.float32)
    if histogram.max() <= 0:
        return None
    histogram = cv2.normalize(histogram, None, 0, 255, cv2.NORM_MINMAX)
    likely = image.likely(ColourModel(histogram, 0))
    reduced_box = np.zeros(likely.shape, bool)
    reduced_box[_reduced(box, likely.shape)] = True
    model = ColourModel(histogram, int((likely & reduced_box).sum()))
    # its colours must be its own: another region of them that would pass for it makes the model useless
    return model if _best_region(likely, model, reduced_box, image.settings) is None else None


def find_by_colour(image: ColourImage, model: ColourModel, visible: list[Box], near: Box | None = None) -> Mask | None:
    """The region of `image` most likely the target of `model` (image pixels), or None. `visible`: the boxes of the
    other tracks in view (a region mostly inside one is that object, not this one); `near`: a box the region must
    overlap."""
    likely = image.likely(model)
    taken = np.zeros_like(likely)
    for box in visible:
        taken[_reduced(box, likely.shape)] = True
    allowed = None
    if near is not None:
        allowed = np.zeros_like(likely)
        allowed[_reduced(near, likely.shape)] = True
    region = _best_region(likely, model, taken, image.settings, allowed)
    return None if region is None else image.likely_near(model, *region)


def _best_region(likely: np.ndarray, model: ColourModel, taken: np.ndarray, settings: ColourSettings,
                 allowed: np.ndarray | None = None) -> tuple[int, int, int, int] | None:
    """(x, y, w, h) of the largest connected region of `likely` that could be the target: min_shown to max_shown
    times its pixels, at most half of it `taken`, touching `allowed` (None: anywhere); None if there is none."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(likely.astype(np.uint8), connectivity=8)
    best: tuple[int, int] | None = None
    for label in range(1, count):
        area = int(stats[label, cv2.CC_STAT_AREA])
        if not max(2, settings.min_shown * model.pixels) <= area <= settings.max_shown * model.pixels \
                or (best is not None and area <= best[1]):
            continue
        region = labels == label
        if (taken & region).sum() > area / 2 or (allowed is not None and not (allowed & region).any()):
            continue
        best = (label, area)
    return None if best is None else tuple(int(v) for v in stats[best[0], :4])
