"""Qwen3-VL (dense): Qwen2.5-VL's prompt and engine path, boxes and points in 0-1000 relative coordinates.

What differs from Qwen2.5-VL (qwen2_5_vl.py), whose adapter this one extends:
- Grounding output is relative: `bbox_2d` / `point_2d` are in [0, 1000] over the whole image (Qwen3-VL model
  cards and the Qwen3-VL cookbook "2d_grounding"), not pixels of the resized input. Parsing therefore runs
  over a 1000 x 1000 space that maps back to the source image by a plain per-axis scale.
- The vision tower uses 16-px patches (the processor's smart resize makes multiples of 32) and feeds
  "DeepStack" features into the first decoder layers; both are inside transformers' model and processor, and
  the cached vision features (`get_image_features`) carry them.
- The decoder is Qwen3 (q/k norms, interleaved M-RoPE): the engine's lean decode step does not cover it, so it
  decodes with the model's own forward over a static cache; ONNX export is refused (export/onnx_export.py).
The released template has no default system turn; the prompt is whatever the checkpoint's chat template makes.
"""

from __future__ import annotations

from transformers import Qwen3VLForConditionalGeneration, Qwen3VLProcessor

from vlm_ros.core.types import Frame, Request
from vlm_ros.models.base import ModelInputs, ParsedAnswer
from vlm_ros.models.parsing import ResizeTransform
from vlm_ros.models.qwen2_5_vl import Qwen25VLAdapter

__all__ = ["ImageOnlyQwen3VLProcessor", "Qwen3VLAdapter", "RELATIVE_RANGE", "relative_transform"]

RELATIVE_RANGE = 1000  # grounding coordinates are 0..1000 over each axis of the whole image


def relative_transform(src_w: int, src_h: int) -> ResizeTransform:
    """Source image -> Qwen3-VL's relative coordinate space (RELATIVE_RANGE on both axes)."""
    return ResizeTransform.resize(src_w, src_h, RELATIVE_RANGE, RELATIVE_RANGE)


class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
    """Qwen3VLProcessor without its video processor (which needs torchvision); the node sends still images only.

    Loads the same files as the full processor (image processor, tokenizer and chat template are the checkpoint's).
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # ProcessorMixin pairs positional sub-processors with this signature's attributes: the video slot is dropped.
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Qwen3VLAdapter(Qwen25VLAdapter):
    family = "qwen3_vl"
    model_class = Qwen3VLForConditionalGeneration
    image_only_processor = ImageOnlyQwen3VLProcessor

    def parse(self, raw_text: str, inputs: ModelInputs, frame: Frame, request: Request) -> ParsedAnswer:
        return self.parse_text(raw_text, relative_transform(frame.width, frame.height), frame, request)
