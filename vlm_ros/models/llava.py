"""LLaVA-style models (CLIP/SigLIP encoder + MLP projector + decoder), and the project's embedded model.

Generic LLaVA checkpoints have no grounding output format of their own: they answer and describe, and are
paired with an open-vocabulary detector for grounding. The embedded model is a LLaVA model trained here to
emit `<loc_N>` location tokens over the source image, so it grounds natively.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import LlavaForConditionalGeneration

from vlm_ros.core.types import Frame, Request, Task
from vlm_ros.embedded.prompt import DEFAULT_DESCRIBE_INSTRUCTION, build_prompt
from vlm_ros.models.base import ModelInputs, ParsedAnswer, VlmAdapter
from vlm_ros.models.parsing import parse_loc_tokens, strip_loc_tokens

DESCRIBE_INSTRUCTION = "Describe the scene in one sentence."


class LlavaAdapter(VlmAdapter):
    family = "llava"
    model_class = LlavaForConditionalGeneration
    can_ground = False

    @staticmethod
    def instruction(request: Request) -> str:
        """The user turn's text (no model needed: the remote backend phrases requests the same way)."""
        return request.instruction.strip() if request.task != Task.DESCRIBE else DESCRIBE_INSTRUCTION

    def prompt(self, request: Request) -> str:
        instruction = self.instruction(request)
        if getattr(self.processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True)
        image_token = getattr(self.processor, "image_token", "<image>")
        return f"USER: {image_token}\n{instruction} ASSISTANT:"

    def parse(self, raw_text: str, inputs: ModelInputs, frame: Frame, request: Request) -> ParsedAnswer:
        return ParsedAnswer(text=raw_text.strip())


class EmbeddedAdapter(LlavaAdapter):
    """The project's own model (vlm_ros/embedded): `label<loc_x0><loc_y0><loc_x1><loc_y1>` over the source image."""

    family = "embedded"
    can_ground = True

    def __init__(self, model, processor, loc_bins: int):
        super().__init__(model, processor)
        self.loc_bins = loc_bins

    @classmethod
    def from_pretrained(cls, path, device="cpu", dtype=None, local_files_only=True):
        base = LlavaAdapter.from_pretrained(path, device, dtype, local_files_only)
        config = json.loads((Path(path) / "embedded_config.json").read_text())["config"]
        return cls(base.model, base.processor, loc_bins=int(config["loc_bins"]))

    @staticmethod
    def instruction(request: Request) -> str:
        return request.instruction if request.task != Task.DESCRIBE else DEFAULT_DESCRIBE_INSTRUCTION

    def prompt(self, request: Request) -> str:
        return build_prompt(self.instruction(request))

    def parse(self, raw_text: str, inputs: ModelInputs, frame: Frame, request: Request) -> ParsedAnswer:
        return self.parse_text(raw_text, frame, self.loc_bins)

    @classmethod
    def parse_text(cls, raw_text: str, frame: Frame, loc_bins: int) -> ParsedAnswer:
        """The model's text -> answer and source-pixel boxes (no model needed: used by the remote backend too)."""
        # The model was trained on boxes normalised by the source image size: no input transform to undo.
        result = parse_loc_tokens(raw_text, frame.width, frame.height, bins=loc_bins)
        return ParsedAnswer(strip_loc_tokens(raw_text), cls.boxes_from(result, None, frame), result.dropped)
