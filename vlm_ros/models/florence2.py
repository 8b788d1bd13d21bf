"""Florence-2 (DaViT encoder + BART encoder-decoder): task-token prompts and `<loc_N>` grounding.

Florence-2 is prompted with task tokens, which its processor expands into text ("<CAPTION>" -> "What does
the image describe?"). Grounding output is ``label<loc_x1><loc_y1><loc_x2><loc_y2>...`` with 1000 bins per
axis over the model input; the processor makes that input by a plain resize of the whole image (768x768 for
the released checkpoints), so the bins are also normalised source coordinates. The transform is still read
from the processor's configuration, so a checkpoint with another resize (or a crop) maps correctly.

Florence-2 has no question-answering task: an ANSWER request returns the most detailed caption (the question
itself is not used), and GROUND uses open-vocabulary detection for one object phrase, phrase grounding for
several, and plain object detection when the instruction names none. Masks: `polygon_prompt` asks for
referring-expression segmentation of a target's label (``<REFERRING_EXPRESSION_SEGMENTATION>``), whose
``<loc_x><loc_y>`` polygons `parse_polygons` maps to source pixels (the grounding stage rasterises them).

Checkpoints: the transformers-native ones (model_type "florence2", e.g. the florence-community conversions),
loaded with ``Florence2ForConditionalGeneration``; the original trust_remote_code repositories are not.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from transformers import Florence2ForConditionalGeneration

from vlm_ros.core.types import Frame, Request, Task
from vlm_ros.models.base import ModelInputs, ParsedAnswer, VlmAdapter
from vlm_ros.models.parsing import PolygonResult, ResizeTransform, map_points, parse_loc_polygons, parse_loc_tokens
from vlm_ros.models.phrases import object_phrases

__all__ = [
    "Florence2Adapter",
    "image_processor_transform",
    "polygons_to_boxes",
    "strip_florence_markup",
    "task_prompt",
]

CAPTION = "<CAPTION>"
DETAILED_CAPTION = "<DETAILED_CAPTION>"
MORE_DETAILED_CAPTION = "<MORE_DETAILED_CAPTION>"
OBJECT_DETECTION = "<OD>"
PHRASE_GROUNDING = "<CAPTION_TO_PHRASE_GROUNDING>"
OPEN_VOCABULARY_DETECTION = "<OPEN_VOCABULARY_DETECTION>"
REFERRING_SEGMENTATION = "<REFERRING_EXPRESSION_SEGMENTATION>"

_MARKUP = re.compile(r"</?(?:s|pad|unk|od|box|bbox|ground|obj|poly|sep)>|<loc_[^<>]*>")
_POLY = re.compile(r"<poly>(.*?)(?:</poly>|$)", re.DOTALL)
_LOC = re.compile(r"<loc_([^<>]*)>")
_SPACE_BEFORE_MARKUP = re.compile(r"\s+(?=<(?:loc_|/?poly>|sep>))")


# ------------------------------------------------------------------------------------------------
# pure helpers


def image_processor_transform(image_processor: Any, src_w: int, src_h: int,
                              pixel_shape: tuple[int, int] | None = None) -> ResizeTransform:
    """The source -> model-input transform of a CLIP/BLIP-style image processor, from its configuration.

    Handles ``size`` = {"height", "width"} (plain resize), {"shortest_edge"} (aspect-preserving, long side
    truncated as transformers does) and {"shortest_edge", "longest_edge"}, followed by an optional centre crop.
    `pixel_shape` = (height, width) of the processor's output, checked against the computed size.
    """
    size = _as_dict(getattr(image_processor, "size", None))
    w, h = float(src_w), float(src_h)
    sx = sy = 1.0
    if getattr(image_processor, "do_resize", True) and size:
        if size.get("height") and size.get("width"):
            new_w, new_h = int(size["width"]), int(size["height"])
        elif size.get("shortest_edge"):
            new_h, new_w = _shortest_edge_size(src_h, src_w, int(size["shortest_edge"]), size.get("longest_edge"))
        else:
            raise ValueError(f"unsupported image processor size {size}")
        sx, sy = new_w / w, new_h / h
        w, h = float(new_w), float(new_h)
    crop_x = crop_y = pad_x = pad_y = 0.0
    crop = _as_dict(getattr(image_processor, "crop_size", None))
    if getattr(image_processor, "do_center_crop", False) and crop:
        cw, ch = int(crop["width"]), int(crop["height"])
        # transformers' center_crop, per axis: crop from (size - crop) // 2, or, when the crop is larger than
        # the image, zero padding of ceil((crop - size) / 2) before the image
        crop_x, pad_x = _crop_or_pad(int(w), cw, sx)
        crop_y, pad_y = _crop_or_pad(int(h), ch, sy)
        w, h = float(cw), float(ch)
    if pixel_shape is not None and (int(pixel_shape[0]), int(pixel_shape[1])) != (int(h), int(w)):
        raise ValueError(f"image processor produced {tuple(pixel_shape)} (h, w) but its configuration gives "
                         f"{(int(h), int(w))}: cannot map boxes back to source pixels")
    return ResizeTransform(src_w, src_h, sx, sy, pad_x, pad_y, crop_x, crop_y)


def _crop_or_pad(size: int, crop: int, scale: float) -> tuple[float, float]:
    """(crop offset in source pixels, padding in input pixels) of a centre crop along one axis."""
    if size >= crop:
        return ((size - crop) // 2) / scale, 0.0
    return 0.0, float(-((size - crop) // 2))


def _as_dict(value: Any) -> dict:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    keys = ("height", "width", "shortest_edge", "longest_edge")
    return {k: getattr(value, k) for k in keys if getattr(value, k, None)}


def _shortest_edge_size(h: int, w: int, shortest: int, longest: int | None) -> tuple[int, int]:
    """(height, width) of transformers' shortest-edge resize, computed by transformers' own size functions."""
    import numpy as np
    from transformers.image_transforms import get_resize_output_image_size, get_size_with_aspect_ratio
    from transformers.image_utils import ChannelDimension

    if longest:
        return tuple(get_size_with_aspect_ratio((h, w), shortest, int(longest)))  # type: ignore[return-value]
    dummy = np.broadcast_to(np.zeros((1, 1, 1), np.uint8), (3, h, w))  # no allocation: only its shape is read
    return tuple(get_resize_output_image_size(dummy, shortest, default_to_square=False,  # type: ignore[return-value]
                                              input_data_format=ChannelDimension.FIRST))


def polygons_to_boxes(text: str) -> str:
    """Replace each ``<poly>x y x y ...</poly>`` (loc tokens) by the 4 loc tokens of its bounding box.

    Florence-2 may answer <OPEN_VOCABULARY_DETECTION> with polygons; their points would otherwise be read as
    boxes. Polygons with a non-numeric token or fewer than 2 points are removed.
    """

    def bbox(match: re.Match) -> str:
        values = _LOC.findall(match.group(1))
        if len(values) < 4 or not all(v.isascii() and v.isdigit() and len(v) <= 9 for v in values):
            return ""
        nums = [int(v) for v in values[: len(values) // 2 * 2]]
        xs, ys = nums[0::2], nums[1::2]
        return f"<loc_{min(xs)}><loc_{min(ys)}><loc_{max(xs)}><loc_{max(ys)}>"

    return _POLY.sub(bbox, text)


def strip_florence_markup(text: str) -> str:
    """Answer text without loc tokens and Florence-2's markup, whitespace collapsed."""
    return " ".join(_MARKUP.sub(" ", text).split())


def task_prompt(request: Request, describe_task: str = CAPTION, answer_task: str = MORE_DETAILED_CAPTION
                ) -> tuple[str, str]:
    """(task token, text input) for a request; the text input is empty for tasks without one."""
    if request.task == Task.DESCRIBE:
        return describe_task, ""
    if request.task == Task.ANSWER:
        return answer_task, ""
    phrases = object_phrases(request.instruction)
    if not phrases:
        return OBJECT_DETECTION, ""
    if len(phrases) == 1:
        return OPEN_VOCABULARY_DETECTION, phrases[0]
    return PHRASE_GROUNDING, ", ".join(phrases)


# ------------------------------------------------------------------------------------------------
# the adapter


class Florence2Adapter(VlmAdapter):
    family = "florence2"
    model_class = Florence2ForConditionalGeneration
    supports_static_cache = False  # encoder-decoder: the engine uses generate() with its hooks
    can_ground = True
    loc_bins = 1000

    def __init__(self, model: torch.nn.Module, processor: Any, describe_task: str = CAPTION,
                 answer_task: str = MORE_DETAILED_CAPTION):
        super().__init__(model, processor)
        self.describe_task = describe_task
        self.answer_task = answer_task

    def task_prompt(self, request: Request) -> tuple[str, str]:
        """(task token, text input) for a request; the text input is empty for tasks without one."""
        return task_prompt(request, self.describe_task, self.answer_task)

    def prompt(self, request: Request) -> str:
        task, text = self.task_prompt(request)
        return task + text  # the processor expands the task token into Florence-2's own wording

    def input_transform(self, frame: Frame, tensors: dict[str, torch.Tensor]) -> ResizeTransform:
        h, w = tensors["pixel_values"].shape[-2:]
        return image_processor_transform(self.processor.image_processor, frame.width, frame.height, (int(h), int(w)))

    def decode_text(self, token_ids: list[int]) -> str:
        """Keep loc tokens and markup (<poly>, <sep>...) for `parse`; drop BOS/EOS/padding."""
        text = self.tokenizer.decode(token_ids, skip_special_tokens=False)
        for tok in (self.tokenizer.bos_token, self.tokenizer.eos_token, self.tokenizer.pad_token):
            if tok:
                text = text.replace(tok, "")
        # word-level tokenizers put spaces between tokens; Florence-2's own output has none before markup
        text = _SPACE_BEFORE_MARKUP.sub("", text)
        return text.strip()

    def polygon_prompt(self, label: str) -> str:
        """Referring-expression segmentation: Florence-2 outlines `label` with polygons."""
        return REFERRING_SEGMENTATION + label

    def parse_polygons(self, raw_text: str, inputs: ModelInputs) -> PolygonResult:
        input_h, input_w = (int(v) for v in inputs.tensors["pixel_values"].shape[-2:])
        result = parse_loc_polygons(raw_text, input_w, input_h, bins=self.loc_bins)
        result.polygons = [map_points(p, inputs.transform) for p in result.polygons]
        return result

    def parse(self, raw_text: str, inputs: ModelInputs, frame: Frame, request: Request) -> ParsedAnswer:
        input_h, input_w = (int(v) for v in inputs.tensors["pixel_values"].shape[-2:])
        return self.parse_text(raw_text, (input_w, input_h), inputs.transform, frame, request)

    @classmethod
    def parse_text(cls, raw_text: str, input_size: tuple[int, int], transform: ResizeTransform, frame: Frame,
                   request: Request) -> ParsedAnswer:
        """The model's text -> answer and source-pixel boxes; input_size (w, h) and `transform` (source -> input)
        describe the model input (no model needed: used by the remote backend too)."""
        if request.task != Task.GROUND:
            return ParsedAnswer(strip_florence_markup(raw_text))
        # bins are over the model input: parse in input pixels, then undo the processor's transform
        input_w, input_h = input_size
        result = parse_loc_tokens(polygons_to_boxes(raw_text), input_w, input_h, bins=cls.loc_bins)
        boxes = cls.boxes_from(result, transform, frame)
        return ParsedAnswer(strip_florence_markup(raw_text), boxes, result.dropped)
