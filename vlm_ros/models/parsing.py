"""Grounding parsers: untrusted model text -> validated boxes and points. Pure functions, no eval, no ROS.

Every parser returns a :class:`ParseResult`: the boxes (and, for models that point, the points) it accepted
and, for everything it refused, a reason string starting with one of the reason words ("non-finite",
"out of range", "inverted", "degenerate", "malformed", "truncated", "label too long", "too many"), then ": "
and a short, sanitised excerpt of the offending entry. Accepted boxes are finite, clipped to the image the
function documents, with x_min <= x_max, y_min <= y_max and positive area; accepted points are finite and
inside that image. Labels are stripped of control and format characters (including bidi overrides and
zero-width characters) and whitespace-collapsed.

Image coordinates are *edge* coordinates as in core.types.Box: (0, 0, W, H) is the whole image.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import dataclass, field

import numpy as np

from vlm_ros.core.types import Box

__all__ = [
    "ParsedBox",
    "ParsedPoint",
    "ParseResult",
    "PolygonResult",
    "box_or_reason",
    "ResizeTransform",
    "clean_label",
    "map_box",
    "map_points",
    "parse_loc_polygons",
    "parse_loc_tokens",
    "parse_paligemma",
    "parse_qwen_json",
    "strip_loc_tokens",
]

MAX_DROPPED = 100  # dropped reasons listed per result; the rest are counted in one summary entry
_SNIPPET = 48


@dataclass(frozen=True)
class ParsedBox:
    label: str
    box: Box


@dataclass(frozen=True)
class ParsedPoint:
    label: str
    x: float
    y: float


@dataclass
class ParseResult:
    boxes: list[ParsedBox] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    points: list[ParsedPoint] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------
# shared helpers


def clean_label(text: str) -> str:
    """Remove control/format/unassigned/private-use characters, turn whitespace into single spaces."""
    out = []
    for ch in text:
        if ch.isspace():
            out.append(" ")
        elif unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn"):
            out.append(ch)
    return " ".join("".join(out).split())


def _snippet(text: str) -> str:
    s = clean_label(text[: _SNIPPET * 4])
    return s if len(s) <= _SNIPPET else s[: _SNIPPET - 3] + "..."


class _Drops:
    """Collects dropped-entry reasons, listing at most MAX_DROPPED of them."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.unlisted = 0

    def add(self, reason: str, excerpt: str = "") -> None:
        if len(self.items) < MAX_DROPPED:
            snip = _snippet(excerpt) if excerpt else ""
            self.items.append(f"{reason}: {snip}" if snip else reason)
        else:
            self.unlisted += 1

    def result(self) -> list[str]:
        if self.unlisted:
            return [*self.items, f"too many: {self.unlisted} further dropped entries not listed"]
        return list(self.items)


def _check_size(width: float, height: float) -> tuple[float, float]:
    w, h = float(width), float(height)
    if not (math.isfinite(w) and math.isfinite(h) and w > 0 and h > 0):
        raise ValueError(f"image size must be positive and finite, got {width}x{height}")
    return w, h


def _label_or_reason(raw: str, max_label_len: int) -> tuple[str | None, str]:
    """(clean label, "") or (None, reason)."""
    if len(raw) > 8 * max_label_len + 64:  # don't even scan a huge blob
        return None, "label too long"
    label = clean_label(raw)
    if len(label) > max_label_len:
        return None, "label too long"
    return label, ""


def box_or_reason(
    x1: float, y1: float, x2: float, y2: float, width: float, height: float, margin: float
) -> tuple[Box | None, str]:
    """(box, "") for corners inside an image of width x height (overshoot up to margin * size is clipped), else
    (None, reason): "non-finite", "out of range", "inverted" or "degenerate"."""
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return None, "non-finite"
    mx, my = margin * width, margin * height
    if min(x1, x2) < -mx or max(x1, x2) > width + mx or min(y1, y2) < -my or max(y1, y2) > height + my:
        return None, "out of range"
    if x1 > x2 or y1 > y2:
        return None, "inverted"
    box = Box(x1, y1, x2, y2).clipped(width, height)  # type: ignore[arg-type]
    if box.width <= 0 or box.height <= 0:
        return None, "degenerate"
    return box, ""


def _point_or_reason(x: float, y: float, width: float, height: float, margin: float
                     ) -> tuple[tuple[float, float] | None, str]:
    """Validate a point against an image of width x height; clip overshoot up to margin * size."""
    if not (math.isfinite(x) and math.isfinite(y)):
        return None, "non-finite"
    if not (-margin * width <= x <= width * (1 + margin) and -margin * height <= y <= height * (1 + margin)):
        return None, "out of range"
    return (min(max(x, 0.0), width), min(max(y, 0.0), height)), ""


class _Collector:
    """Accepts boxes and points up to max_boxes entries, then only counts."""

    def __init__(self, max_boxes: int, max_label_len: int) -> None:
        if max_boxes < 0 or max_label_len < 0:
            raise ValueError("max_boxes and max_label_len must be >= 0")
        self.max_boxes = max_boxes
        self.max_label_len = max_label_len
        self.boxes: list[ParsedBox] = []
        self.points: list[ParsedPoint] = []
        self.drops = _Drops()
        self.excess = 0

    @property
    def full(self) -> bool:
        return len(self.boxes) + len(self.points) >= self.max_boxes

    def offer(self, raw_label: str, corners: tuple[float, float, float, float], w: float, h: float,
              margin: float, excerpt: str) -> None:
        if self.full:
            self.excess += 1
            return
        box, reason = box_or_reason(*corners, w, h, margin)
        if box is None:
            self.drops.add(reason, excerpt)
            return
        label, reason = _label_or_reason(raw_label, self.max_label_len)
        if label is None:
            self.drops.add(reason, raw_label)
            return
        self.boxes.append(ParsedBox(label, box))

    def offer_point(self, raw_label: str, x: float, y: float, w: float, h: float, margin: float, excerpt: str) -> None:
        if self.full:
            self.excess += 1
            return
        point, reason = _point_or_reason(x, y, w, h, margin)
        if point is None:
            self.drops.add(reason, excerpt)
            return
        label, reason = _label_or_reason(raw_label, self.max_label_len)
        if label is None:
            self.drops.add(reason, raw_label)
            return
        self.points.append(ParsedPoint(label, *point))

    def result(self) -> ParseResult:
        dropped = self.drops.result()
        if self.excess:
            dropped.append(f"too many: {self.excess} boxes beyond max_boxes={self.max_boxes}")
        return ParseResult(self.boxes, dropped, self.points)


def _bin_value(token_body: str, bins: int) -> tuple[int | None, str]:
    if not token_body.isascii() or not token_body.isdigit():
        return None, "malformed"
    if len(token_body) > 9 or int(token_body) >= bins:  # length check first: no huge int()
        return None, "out of range"
    return int(token_body), ""


# ------------------------------------------------------------------------------------------------
# Florence-2 style <loc_N> tokens

_LOC_RUN = re.compile(r"(?:<loc_[^<>]*>)+")
_LOC_TOKEN = re.compile(r"<loc_([^<>]*)>")
# Markup Florence-2 emits around grounding output (its post-processor strips the same tokens).
_FLORENCE_MARKUP = re.compile(r"</?(?:s|pad|od|box|bbox|ground|obj|poly|sep|unk)>")


def parse_loc_tokens(
    text: str,
    image_width: float,
    image_height: float,
    bins: int = 1000,
    order: str = "xyxy",
    *,
    max_boxes: int = 100,
    max_label_len: int = 64,
) -> ParseResult:
    """Parse ``label<loc_a><loc_b><loc_c><loc_d>...`` into boxes in pixels of the given image.

    Florence-2 <OD>, <CAPTION_TO_PHRASE_GROUNDING> and <OPEN_VOCABULARY_DETECTION> output, and the
    embedded model (bins=64). A label is the text before a run of loc tokens (it may be empty); a run of
    4k tokens gives k boxes with that label, as in Florence-2 phrase grounding. ``order`` is the corner
    order inside each group of four: "xyxy" (x_min y_min x_max y_max) or "yxyx".

    Bin k of ``bins`` maps to the bin centre, pixel (k + 0.5) * size / bins. Source: Florence-2's
    post-processor, transformers/models/florence2/processing_florence2.py, Florence2PostProcessor.dequantize
    ("Add 0.5 to use the center position of the bin"; transformers 5.x then truncates to int, we keep
    the float). Tokens with k >= bins (Florence-2's vocabulary has <loc_0>..<loc_999>) are out of range.
    """
    if order not in ("xyxy", "yxyx"):
        raise ValueError(f"order must be 'xyxy' or 'yxyx', got {order!r}")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    w, h = _check_size(image_width, image_height)
    col = _Collector(max_boxes, max_label_len)
    drops = col.drops
    prev_end = 0
    for run in _LOC_RUN.finditer(text):
        # a list separates entries with ", " (the embedded model): that is not part of the next label
        raw_label = _FLORENCE_MARKUP.sub("", text[prev_end : run.start()]).lstrip(" ,;")
        prev_end = run.end()
        tokens = _LOC_TOKEN.findall(run.group())
        n_full = len(tokens) // 4 * 4
        if col.full:
            col.excess += n_full // 4
            continue
        for i in range(0, n_full, 4):
            group = tokens[i : i + 4]
            excerpt = "".join(f"<loc_{t}>" for t in group)
            if col.full:
                col.excess += 1
                continue
            values = [_bin_value(t, bins) for t in group]
            bad = next((reason for v, reason in values if v is None), None)
            if bad is not None:
                drops.add(bad, raw_label.strip()[-24:] + excerpt)
                continue
            a, b, c, d = (v + 0.5 for v, _ in values)  # type: ignore[operator]
            x1, y1, x2, y2 = (a, b, c, d) if order == "xyxy" else (b, a, d, c)
            corners = (x1 * w / bins, y1 * h / bins, x2 * w / bins, y2 * h / bins)
            col.offer(raw_label, corners, w, h, 0.0, raw_label.strip()[-24:] + excerpt)
        if n_full != len(tokens):
            drops.add(f"malformed: {len(tokens) - n_full} stray loc token(s)", raw_label)
    return col.result()


# ------------------------------------------------------------------------------------------------
# Florence-2 polygons (<REFERRING_EXPRESSION_SEGMENTATION>)

_POLY_SPLIT = re.compile(r"<sep>|</?poly>")


@dataclass
class PolygonResult:
    polygons: list[np.ndarray] = field(default_factory=list)  # each (K, 2) float64 x, y in pixels, K >= 3
    dropped: list[str] = field(default_factory=list)


def parse_loc_polygons(
    text: str,
    image_width: float,
    image_height: float,
    bins: int = 1000,
    *,
    max_polygons: int = 16,
    max_vertices: int = 512,
) -> PolygonResult:
    """Parse Florence-2 polygon output into polygons in pixels of the given image.

    Format (Florence-2's post-processor, transformers/models/florence2/processing_florence2.py,
    parse_description_with_polygons_from_text_and_spans): an optional label, then runs of ``<loc_x><loc_y>``
    pairs; ``<sep>`` separates the polygons of one object, ``<poly>...</poly>`` may wrap them. Bin k maps to
    pixel (k + 0.5) * size / bins, as for boxes. A polygon needs 3 to `max_vertices` vertices; a run with an odd
    token count loses its last token (as Florence-2's parser does) and is reported; runs with malformed or
    out-of-range tokens are dropped. At most `max_polygons` polygons are kept.
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    w, h = _check_size(image_width, image_height)
    drops = _Drops()
    polygons: list[np.ndarray] = []
    excess = 0
    for part in _POLY_SPLIT.split(text):
        for run in _LOC_RUN.finditer(part):
            if len(polygons) >= max_polygons:
                excess += 1
                continue
            tokens = _LOC_TOKEN.findall(run.group())
            if len(tokens) > 2 * max_vertices:
                drops.add(f"too many: {len(tokens) // 2} vertices beyond max_vertices={max_vertices}")
                continue
            values = [_bin_value(t, bins) for t in tokens]
            bad = next((reason for v, reason in values if v is None), None)
            if bad is not None:
                drops.add(bad, run.group())
                continue
            if len(values) % 2:
                drops.add("malformed: odd number of loc tokens, last one ignored", run.group()[-24:])
                values = values[:-1]
            if len(values) < 6:
                drops.add("degenerate: fewer than 3 vertices", run.group())
                continue
            xy = (np.array([v for v, _ in values], np.float64).reshape(-1, 2) + 0.5) / bins  # (K, 2) in (0, 1)
            polygons.append(xy * np.array([w, h]))
    dropped = drops.result()
    if excess:
        dropped.append(f"too many: {excess} polygons beyond max_polygons={max_polygons}")
    return PolygonResult(polygons, dropped)


# ------------------------------------------------------------------------------------------------
# PaliGemma <locNNNN> tokens

def strip_loc_tokens(text: str) -> str:
    """Answer text with location tokens (`<loc_N>`, `<locNNNN>`) removed and whitespace collapsed."""
    return _SPACE_BEFORE_PUNCT.sub(r"\1", " ".join(_ANY_LOC.sub(" ", text).split()))


_ANY_LOC = re.compile(r"<loc_?\d+>")
_SPACE_BEFORE_PUNCT = re.compile(r" ([,.;:?!])")
_PG_LOCS = re.compile(r"\s*((?:<loc[^<>]*>){4})")
_PG_SEGS = re.compile(r"\s*((?:<seg[^<>]*>)*)")
_PG_LOC = re.compile(r"<loc(\d{4})>")
_PG_SEG = re.compile(r"<seg\d{3}>")
_PG_SPECIAL = re.compile(r"<(?:eos|bos|pad|/s|s)>")


def parse_paligemma(
    text: str,
    image_width: float,
    image_height: float,
    *,
    denominator: int = 1023,
    max_boxes: int = 100,
    max_label_len: int = 64,
) -> ParseResult:
    """Parse PaliGemma ``detect`` output: ``<locY1><locX1><locY2><locX2> label`` entries joined by " ; ".

    Each <locNNNN> has exactly 4 digits, 0..1023 (1024 tokens); the order is y_min x_min y_max x_max,
    normalised to the model input (which PaliGemma makes by plain resize, so also to the source image).
    Segmentation output (16 <segNNN> tokens after the box) is accepted; the mask is ignored.

    Normalisation: big_vision, which trained PaliGemma, encodes a box as round(v * 1023) clipped to
    0..1023 (big_vision/pp/proj/paligemma/segmentation.py, refcoco_mask2str) and its evaluator decodes
    tokens / 1023 (big_vision/evaluators/proj/paligemma/transfers/segmentation.py); so the default is
    ``denominator=1023``, the exact inverse. Google's PaliGemma notebooks and several third-party parsers
    divide by 1024 instead (the difference is under 0.1 %): pass ``denominator=1024`` to match them.
    """
    if isinstance(denominator, bool) or not isinstance(denominator, int) or denominator < 1:
        raise ValueError(f"denominator must be a positive integer, got {denominator!r}")
    w, h = _check_size(image_width, image_height)
    col = _Collector(max_boxes, max_label_len)
    drops = col.drops
    for chunk in _PG_SPECIAL.sub("", text).split(";"):
        if not chunk.strip():
            continue
        if col.full:
            col.excess += 1
            continue
        # matched piecewise (no regex over the label: nothing to backtrack on hostile whitespace)
        m_loc = _PG_LOCS.match(chunk)
        m_seg = _PG_SEGS.match(chunk, m_loc.end()) if m_loc else None
        label = chunk[m_seg.end() :] if m_seg else ""
        locs = _PG_LOC.findall(m_loc.group(1)) if m_loc else []
        segs = m_seg.group(1) if m_seg else ""
        if len(locs) != 4 or "<" in label or (segs and len(_PG_SEG.findall(segs)) * 8 != len(segs)):
            drops.add("malformed", chunk)
            continue
        k = [int(v) for v in locs]
        if max(k) > 1023:
            drops.add("out of range", chunk)
            continue
        y1, x1, y2, x2 = k
        corners = (x1 * w / denominator, y1 * h / denominator, x2 * w / denominator, y2 * h / denominator)
        col.offer(label, corners, w, h, 0.0, chunk)
    return col.result()


# ------------------------------------------------------------------------------------------------
# Qwen2.5-VL grounding JSON

_FENCE = re.compile(r"```[ \t]*(?:json)?[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
_WS = " \t\r\n"


def _json_elements(text: str, drops: _Drops) -> list[object]:
    """The elements of the first JSON list (or run of objects) in text; recovers a truncated list."""
    fence = _FENCE.search(text)
    body = fence.group(1) if fence else text
    starts = [i for i in (body.find("["), body.find("{")) if i >= 0]
    if not starts:
        if body.strip():
            drops.add("malformed: no JSON list found", body)
        return []
    start = min(starts)
    decoder = json.JSONDecoder()
    if body[start] == "[":
        # the first complete list of objects among the first few "[" (prose such as "[see below]" may
        # come first; an inner list such as a bbox_2d is not a list of objects)
        candidate = start
        for attempt in range(8):
            try:
                value, _ = decoder.raw_decode(body, candidate)
                if isinstance(value, list) and (attempt == 0 or all(isinstance(v, dict) for v in value)):
                    return value
            except (ValueError, RecursionError):
                pass
            candidate = body.find("[", candidate + 1)
            if candidate < 0:
                break
        pos = start + 1  # truncated or broken: recover complete elements of the first list
    else:
        pos = start
    elements: list[object] = []
    n = len(body)
    while True:
        while pos < n and body[pos] in _WS + ",":
            pos += 1
        if pos >= n or body[pos] == "]":
            break
        try:
            value, pos = decoder.raw_decode(body, pos)
        except RecursionError:
            drops.add("malformed: nested too deeply", body[pos:])
            break
        except ValueError:
            rest = body[pos:]
            reason = "truncated" if rest.lstrip().startswith("{") and "}" not in rest else "malformed"
            drops.add(reason, rest)
            break
        elements.append(value)
    return elements


def _number(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        return float(v)
    except OverflowError:  # an integer too large for a float
        return math.inf


def parse_qwen_json(
    text: str,
    input_width: float,
    input_height: float,
    *,
    max_boxes: int = 100,
    max_label_len: int = 64,
    margin: float = 0.05,
) -> ParseResult:
    """Parse Qwen2.5-VL grounding output into boxes and points in pixels of the *resized model input*.

    Expected (Qwen2.5-VL cookbook "spatial_understanding"; Qwen2.5-VL technical report, sec. 2.2.1:
    absolute coordinates of the resized image):
        ```json
        [
            {"bbox_2d": [135, 114, 1016, 672], "label": "chair"},
            {"point_2d": [420, 318], "label": "free space on the table"}
        ]
        ```
    The fence and surrounding prose are optional. A truncated list yields its complete objects. Only
    ``json`` is used to read it. ``label`` may be missing (empty label). An entry with ``bbox_2d`` is a box
    (a ``point_2d`` beside it is ignored); one with only ``point_2d`` (2 numbers) is a point. Corners and points
    may overshoot the image by ``margin`` (a fraction of its size) and are clipped; further out is "out of
    range". The adapter maps the result to source pixels with :func:`map_box` / :func:`map_points`.
    """
    w, h = _check_size(input_width, input_height)
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be finite and >= 0, got {margin}")
    col = _Collector(max_boxes, max_label_len)
    drops = col.drops
    elements = _json_elements(text, drops)
    for el in elements:
        if col.full:
            col.excess += 1
            continue
        excerpt = _excerpt_json(el)
        if not isinstance(el, dict):
            drops.add("malformed: entry is not an object", excerpt)
            continue
        label = el.get("label", "")
        if not isinstance(label, str):
            drops.add("malformed: label is not a string", excerpt)
            continue
        if "bbox_2d" not in el:
            if "point_2d" not in el:
                drops.add("malformed: no bbox_2d or point_2d", excerpt)
                continue
            point = el["point_2d"]
            xy = [_number(v) for v in point] if isinstance(point, list) and len(point) == 2 else [None]
            if any(c is None for c in xy):
                drops.add("malformed: point_2d is not 2 numbers", excerpt)
                continue
            col.offer_point(label, xy[0], xy[1], w, h, margin, excerpt)  # type: ignore[arg-type]
            continue
        bbox = el["bbox_2d"]
        if not isinstance(bbox, list) or len(bbox) != 4:
            drops.add("malformed: bbox_2d is not 4 numbers", excerpt)
            continue
        coords = [_number(v) for v in bbox]
        if any(c is None for c in coords):
            drops.add("malformed: bbox_2d is not 4 numbers", excerpt)
            continue
        col.offer(label, tuple(coords), w, h, margin, excerpt)  # type: ignore[arg-type]
    return col.result()


def _excerpt_json(value: object) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)[: _SNIPPET * 4]
    except (ValueError, RecursionError, OverflowError):
        return "<unprintable>"


# ------------------------------------------------------------------------------------------------
# model input -> source image


@dataclass(frozen=True)
class ResizeTransform:
    """How a model input was made from a source image: ``input = (source - crop) * scale + pad``.

    crop_x/crop_y are in source pixels (the crop's top-left corner, applied before scaling);
    pad_x/pad_y are in input pixels (left/top padding added after scaling).
    """

    src_w: int
    src_h: int
    scale_x: float
    scale_y: float
    pad_x: float = 0.0
    pad_y: float = 0.0
    crop_x: float = 0.0
    crop_y: float = 0.0

    def __post_init__(self) -> None:
        values = (self.src_w, self.src_h, self.scale_x, self.scale_y, self.pad_x, self.pad_y, self.crop_x, self.crop_y)
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"resize transform has a non-finite value: {values}")
        if self.src_w <= 0 or self.src_h <= 0 or self.scale_x <= 0 or self.scale_y <= 0:
            raise ValueError(f"resize transform needs positive sizes and scales: {values}")

    @classmethod
    def resize(cls, src_w: int, src_h: int, dst_w: int, dst_h: int) -> ResizeTransform:
        """Plain (aspect-changing) resize to dst_w x dst_h."""
        return cls(src_w, src_h, dst_w / src_w, dst_h / src_h)

    @classmethod
    def letterbox(cls, src_w: int, src_h: int, dst_w: int, dst_h: int) -> ResizeTransform:
        """Aspect-preserving resize to fit, rounded to whole pixels, then centred padding (floor left/top)."""
        s = min(dst_w / src_w, dst_h / src_h)
        new_w, new_h = max(1, round(src_w * s)), max(1, round(src_h * s))
        return cls(src_w, src_h, new_w / src_w, new_h / src_h, (dst_w - new_w) // 2, (dst_h - new_h) // 2)

    @classmethod
    def center_crop(cls, src_w: int, src_h: int, dst_w: int, dst_h: int) -> ResizeTransform:
        """Aspect-preserving resize to cover, rounded to whole pixels, then a centred dst_w x dst_h crop."""
        s = max(dst_w / src_w, dst_h / src_h)
        new_w, new_h = max(dst_w, round(src_w * s)), max(dst_h, round(src_h * s))
        sx, sy = new_w / src_w, new_h / src_h
        return cls(src_w, src_h, sx, sy, crop_x=((new_w - dst_w) // 2) / sx, crop_y=((new_h - dst_h) // 2) / sy)


def map_points(xy: np.ndarray, transform: ResizeTransform) -> np.ndarray:
    """Map (K, 2) points (x, y) from model-input pixels to source-image pixels, clipped to the source image."""
    t = transform
    out = (np.asarray(xy, np.float64) - (t.pad_x, t.pad_y)) / (t.scale_x, t.scale_y) + (t.crop_x, t.crop_y)
    return np.clip(out, 0.0, (float(t.src_w), float(t.src_h)))  # (K, 2)


def map_box(box: Box, transform: ResizeTransform) -> Box:
    """Map a box from model-input pixels to source-image pixels, clipped to the source image.

    The result can have zero area (a box entirely in the padding); callers drop those.
    """
    t = transform
    x1 = (box.x_min - t.pad_x) / t.scale_x + t.crop_x
    x2 = (box.x_max - t.pad_x) / t.scale_x + t.crop_x
    y1 = (box.y_min - t.pad_y) / t.scale_y + t.crop_y
    y2 = (box.y_max - t.pad_y) / t.scale_y + t.crop_y
    return Box(x1, y1, x2, y2).clipped(t.src_w, t.src_h)
