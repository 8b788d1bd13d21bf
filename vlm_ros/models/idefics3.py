"""SmolVLM / SmolVLM2 and Idefics3 (SigLIP tiles + pixel-shuffle connector + Llama-family decoder).

SmolVLM checkpoints use the Idefics3 architecture (`model_type` "idefics3"); SmolVLM2 ones have their own
transformers classes ("smolvlm") with the same image path. Neither emits boxes: `can_ground` is False and the
node pairs them with an open-vocabulary detector for grounding.

Image path (the Idefics3/SmolVLM image processor): resize so the longest edge is `size["longest_edge"]`
(aspect kept, the short side made even), then, with image splitting, resize each side up to a multiple of the
tile size `max_image_size["longest_edge"]` and cut rows x cols tiles, plus the whole image resized to one tile
(the "global" image). Without splitting the whole image is resized to one square tile. Both are plain
(aspect-changing) resizes of the whole source image, described by `input_transform`.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from transformers import Idefics3ForConditionalGeneration, ProcessorMixin
from transformers.models.smolvlm.processing_smolvlm import SmolVLMProcessor

from vlm_ros.core.types import Frame, Request, Task
from vlm_ros.models.base import ModelInputs, ParsedAnswer, VlmAdapter, load_checked_model
from vlm_ros.models.parsing import ResizeTransform

__all__ = ["DESCRIBE_INSTRUCTION", "Idefics3Adapter", "ImageOnlySmolVLMProcessor", "idefics3_input_size"]

log = logging.getLogger(__name__)

DESCRIBE_INSTRUCTION = "Can you describe this image?"  # the SmolVLM model cards' example
MAX_IMAGE_SIDE = 4096  # the processor's absolute cap on a resized side


def idefics3_input_size(height: int, width: int, *, longest_edge: int | None, tile: int,
                        do_image_splitting: bool) -> tuple[int, int]:
    """(height, width) of the image the tiles are cut from (Idefics3/SmolVLM image processor, PIL and torch).

    With splitting, that image is tiled exactly (both sides are multiples of `tile`) unless it fits in one
    tile, when it is the single tile itself. Without splitting it is one `tile` x `tile` image.
    """
    if not do_image_splitting:
        return tile, tile
    h, w = height, width
    if longest_edge:  # longest edge -> longest_edge, aspect kept, the other side truncated then made even
        aspect = w / h
        if w >= h:
            w = longest_edge
            h = int(w / aspect)
            h += h % 2
        else:
            h = longest_edge
            w = int(h * aspect)
            w += w % 2
        h, w = max(h, 1), max(w, 1)
        aspect = w / h
        if w >= h and w > MAX_IMAGE_SIDE:
            w, h = MAX_IMAGE_SIDE, max(int(MAX_IMAGE_SIDE / aspect), 1)
        elif h > w and h > MAX_IMAGE_SIDE:
            h, w = MAX_IMAGE_SIDE, max(int(MAX_IMAGE_SIDE * aspect), 1)
    # sides up to multiples of the tile; the second side is derived from the first (as the processor does)
    aspect = w / h
    if w >= h:
        w = math.ceil(w / tile) * tile
        h = math.ceil(int(w / aspect) / tile) * tile
    else:
        h = math.ceil(h / tile) * tile
        w = math.ceil(int(h * aspect) / tile) * tile
    return h, w


class ImageOnlySmolVLMProcessor(SmolVLMProcessor):
    """SmolVLMProcessor for still images: no video processor (torchvision) and no num2words (video timestamps).

    Reads the same checkpoint files as the full processor; the image-token expansion is SmolVLMProcessor's own.
    """

    def __init__(self, image_processor=None, tokenizer=None, image_seq_len: int = 169, chat_template=None, **kwargs):
        # The attributes SmolVLMProcessor.__init__ sets, without its num2words/video requirements.
        self.fake_image_token = getattr(tokenizer, "fake_image_token", "<fake_token_around_image>")
        self.image_token = getattr(tokenizer, "image_token", "<image>")
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.end_of_utterance_token = getattr(tokenizer, "end_of_utterance_token", "<end_of_utterance>")
        self.global_image_token = getattr(tokenizer, "global_image_token", "<global-img>")
        self.video_token = getattr(tokenizer, "video_token", "<video>")
        self.image_seq_len = image_seq_len
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        # SmolVLMProcessor's override only adds video sampling defaults read from the video processor.
        return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)


class Idefics3Adapter(VlmAdapter):
    family = "idefics3"
    model_class = Idefics3ForConditionalGeneration  # SmolVLM2 directories load SmolVLMForConditionalGeneration
    can_ground = False
    # Both feed only the vision tower; the prefill gets the features through mm_encoder_outputs.
    vision_input_names = ("pixel_values", "pixel_attention_mask")

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None,
                        local_files_only: bool = True) -> Idefics3Adapter:
        kwargs: dict[str, Any] = {"local_files_only": local_files_only}
        model_type = json.loads((Path(path) / "config.json").read_text()).get("model_type", "idefics3")
        if model_type == "smolvlm":
            from transformers import SmolVLMForConditionalGeneration as model_class
        else:
            model_class = cls.model_class
        model = load_checked_model(model_class, path, dtype, **kwargs).to(device)
        return cls(model, load_processor(path, model_type, **kwargs))

    # --- prompt -----------------------------------------------------------------------------------------
    def user_text(self, request: Request) -> str:
        instruction = " ".join(request.instruction.split())
        if request.task == Task.DESCRIBE or not instruction:
            return DESCRIBE_INSTRUCTION
        return instruction  # answer; grounding requests get a text answer (no native boxes)

    def prompt(self, request: Request) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.user_text(request)}]}]
        if getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(messages, add_generation_prompt=True)
        # The SmolVLM/Idefics3 chat format, for a directory that ships no template.
        image_token = getattr(self.processor, "image_token", "<image>")
        return f"<|im_start|>User:{image_token}{self.user_text(request)}<end_of_utterance>\nAssistant:"

    def process(self, image, prompt: str) -> dict[str, torch.Tensor]:
        tensors = dict(self.processor(images=[image], text=[prompt], return_tensors="pt",
                                      input_data_format="channels_last"))
        tensors.pop("mm_token_type_ids", None)  # not a model input of this family (1-D positions)
        return tensors

    # --- geometry ---------------------------------------------------------------------------------------
    def input_transform(self, frame: Frame, tensors: dict[str, torch.Tensor]) -> ResizeTransform:
        ip = self.processor.image_processor
        longest = _size_value(ip.size, "longest_edge") if ip.do_resize else None
        tile = _size_value(ip.max_image_size, "longest_edge")
        h, w = idefics3_input_size(frame.height, frame.width, longest_edge=longest, tile=int(tile),
                                   do_image_splitting=bool(ip.do_image_splitting))
        return ResizeTransform.resize(frame.width, frame.height, w, h)

    # --- engine hooks -----------------------------------------------------------------------------------
    def encode_vision(self, inputs: ModelInputs) -> dict[str, Any]:
        t = inputs.tensors
        return {"image": self.model.get_image_features(t["pixel_values"], t.get("pixel_attention_mask"),
                                                       return_dict=True)}

    # --- output -----------------------------------------------------------------------------------------
    def parse(self, raw_text: str, inputs: ModelInputs, frame: Frame, request: Request) -> ParsedAnswer:
        return ParsedAnswer(text=raw_text.strip())


def _size_value(size: Any, key: str) -> int | None:
    """A key of an image processor's size setting (a plain dict or transformers' SizeDict)."""
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


def load_processor(path: str | Path, model_type: str = "idefics3", **kwargs: Any):
    """The checkpoint's processor; for SmolVLM2 without its video half where that cannot be built."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path, **kwargs)
    except (ImportError, ValueError, TypeError, OSError) as exc:
        if model_type != "smolvlm":
            raise
        log.info("full SmolVLM processor unavailable (%s); loading the image-only processor", exc)
        return ImageOnlySmolVLMProcessor.from_pretrained(path, **kwargs)
