"""Qwen2.5-VL: chat-template prompts, JSON `bbox_2d` / `point_2d` grounding in pixels of the smart-resized input.

The processor resizes each image to a size whose sides are multiples of patch_size * merge_size (28 for the
released checkpoints), keeping the pixel count within [min_pixels, max_pixels] ("smart_resize"), then cuts it
into 14-px patches: `image_grid_thw` = (1, H/14, W/14). Qwen2.5-VL's grounding output is absolute pixel
coordinates of that resized input (Qwen2.5-VL technical report, sec. 2.2.1; the Qwen2.5-VL cookbook
"spatial_understanding"), so boxes and points map back to the source image by the per-axis scale of that resize.
An instruction that asks for points ("point to the mug") gets the cookbook's pointing phrasing; points become
point targets (no box).

The language model uses 3-D rotary positions (M-RoPE): the prefill needs `image_grid_thw` and
`mm_token_type_ids` besides the vision features, and every later token's position is offset by the
`rope_deltas` the model stores at prefill; the model's forward applies that offset itself.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

from vlm_ros.core.types import Frame, Request, Task
from vlm_ros.models.base import ModelInputs, ParsedAnswer, VlmAdapter, load_checked_model
from vlm_ros.models.parsing import ResizeTransform, parse_qwen_json
from vlm_ros.models.phrases import object_phrases

__all__ = ["ImageOnlyQwen2_5_VLProcessor", "Qwen25VLAdapter", "asks_for_points", "grounding_instruction",
           "DESCRIBE_INSTRUCTION"]

log = logging.getLogger(__name__)

DESCRIBE_INSTRUCTION = "Describe this image."


_POINTING = re.compile(r"^\s*(?:please\s+|can you\s+|could you\s+)*point\s+(?:to|at|out)\b", re.IGNORECASE)


def asks_for_points(instruction: str) -> bool:
    """Whether a grounding instruction asks for points rather than boxes ("point to the mug")."""
    return bool(_POINTING.match(instruction))


def grounding_instruction(instruction: str) -> str:
    """The user turn for a grounding request, phrased like the Qwen2.5-VL cookbook's detection prompts (boxes) or
    its pointing prompts ("... Output the point coordinates in JSON format.") when the instruction asks for points."""
    phrases = object_phrases(instruction, referring=True)
    if not phrases:
        raise ValueError(f"no object named in grounding instruction {instruction!r}")
    kind = "point" if asks_for_points(instruction) else "bbox"
    if len(phrases) == 1:
        return f"Locate every {phrases[0]} in the image, output the {kind} coordinates in JSON format."
    categories = ", ".join(phrases)
    return f'Locate every instance that belongs to the following categories: "{categories}". ' \
           f"Report {kind} coordinates in JSON format."


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """Qwen2_5_VLProcessor without its video processor.

    The video processor needs torchvision, which is not always importable beside the installed torch; the node
    only ever sends still images, and image processing, tokenizer and chat template are the checkpoint's own.
    Loads the same files as the full processor (`from_pretrained` of a downloaded checkpoint directory).
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # ProcessorMixin pairs positional sub-processors with this signature's attributes, so the video slot
        # (None) is dropped rather than type-checked.
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Qwen25VLAdapter(VlmAdapter):
    family = "qwen2_5_vl"
    model_class = Qwen2_5_VLForConditionalGeneration
    vision_input_names = ("pixel_values",)  # image_grid_thw also feeds the prefill's 3-D positions: kept there
    image_only_processor: ClassVar[type] = ImageOnlyQwen2_5_VLProcessor  # where the full processor cannot load

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None,
                        local_files_only: bool = True) -> Qwen25VLAdapter:
        kwargs: dict[str, Any] = {"local_files_only": local_files_only}
        model = load_checked_model(cls.model_class, path, dtype, **kwargs).to(device)
        return cls(model, load_processor(path, cls.image_only_processor, **kwargs))

    # --- prompt -----------------------------------------------------------------------------------------
    @staticmethod
    def user_text(request: Request) -> str:
        """The user turn's text (no model needed: the remote backend phrases requests the same way)."""
        instruction = " ".join(request.instruction.split())
        if request.task == Task.GROUND and object_phrases(instruction, referring=True):
            return grounding_instruction(instruction)
        if request.task == Task.ANSWER and instruction:
            return instruction
        return DESCRIBE_INSTRUCTION

    def prompt(self, request: Request) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.user_text(request)}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    # --- geometry ---------------------------------------------------------------------------------------
    def input_size(self, tensors: dict[str, torch.Tensor]) -> tuple[int, int]:
        """(width, height) of the resized image the model saw, from the patch grid."""
        patch = int(self.processor.image_processor.patch_size)
        _, grid_h, grid_w = (int(v) for v in tensors["image_grid_thw"][0])  # (T, H/patch, W/patch)
        return grid_w * patch, grid_h * patch

    def input_transform(self, frame: Frame, tensors: dict[str, torch.Tensor]) -> ResizeTransform:
        w, h = self.input_size(tensors)
        return ResizeTransform.resize(frame.width, frame.height, w, h)

    # --- engine hooks -----------------------------------------------------------------------------------
    def encode_vision(self, inputs: ModelInputs) -> dict[str, Any]:
        t = inputs.tensors
        return {"image": self.model.get_image_features(t["pixel_values"], t["image_grid_thw"], return_dict=True)}

    def forward_inputs(self, inputs: ModelInputs) -> dict[str, torch.Tensor]:
        # input_ids, attention_mask, image_grid_thw and mm_token_type_ids: without the token types transformers
        # silently falls back to 1-D positions (wrong for the image tokens and everything after them).
        if "mm_token_type_ids" not in inputs.tensors:
            raise ValueError("Qwen2.5-VL inputs lack mm_token_type_ids: the processor is not a Qwen2.5-VL processor")
        return {k: v for k, v in inputs.tensors.items() if k not in self.vision_input_names}

    # --- output -----------------------------------------------------------------------------------------
    def parse(self, raw_text: str, inputs: ModelInputs, frame: Frame, request: Request) -> ParsedAnswer:
        return self.parse_text(raw_text, inputs.transform, frame, request)

    @classmethod
    def parse_text(cls, raw_text: str, transform: ResizeTransform, frame: Frame, request: Request) -> ParsedAnswer:
        """The model's text -> answer and source-pixel boxes and points; `transform`: source -> smart-resized input."""
        text = raw_text.strip()
        if request.task != Task.GROUND and "bbox_2d" not in text and "point_2d" not in text:
            return ParsedAnswer(text=text)
        t = transform
        in_w, in_h = t.src_w * t.scale_x, t.src_h * t.scale_y  # the resized input's size
        result = parse_qwen_json(text, in_w, in_h)
        return ParsedAnswer(text, cls.boxes_from(result, t, frame), result.dropped, cls.points_from(result, t, frame))


def load_processor(path: str | Path, image_only: type = ImageOnlyQwen2_5_VLProcessor, **kwargs: Any) -> Any:
    """The checkpoint's processor; without its video half (`image_only`) where that cannot be built (no torchvision)."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path, **kwargs)
    except (ImportError, ValueError, TypeError, OSError) as exc:  # the video processor needs torchvision
        log.info("full processor unavailable (%s); loading %s", exc, image_only.__name__)
        return image_only.from_pretrained(path, **kwargs)
