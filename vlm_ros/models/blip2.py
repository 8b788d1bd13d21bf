"""BLIP-2 and InstructBLIP: a frozen ViT, a Q-Former connector (learned queries -> a fixed number of image
tokens), and an OPT / Vicuna (decoder-only) or Flan-T5 (encoder-decoder) language model.

They caption and answer but emit no coordinates (`can_ground = False`): grounding pairs them with an
open-vocabulary detector (vlm_ros.models.detector). Both families generate through their own `generate()`,
which runs the vision encoder and Q-Former and hands embeddings to the language model's `generate()`, so the
engine's static-cache loop cannot drive them (`supports_static_cache = False`).

Prompts follow the papers and the transformers documentation:
- BLIP-2: no text for a caption (unconditional captioning); "Question: {} Answer:" for visual question
  answering (BLIP-2 paper, zero-shot VQA prompt; transformers' BLIP-2 examples).
- InstructBLIP: instruction templates from the InstructBLIP paper's appendix: "A short image description:"
  for captions and "Question: {} Short answer:" for short-answer VQA (a robot wants "red", not a paragraph).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from transformers import Blip2ForConditionalGeneration, InstructBlipForConditionalGeneration

from vlm_ros.core.types import Frame, Request, Task
from vlm_ros.models.base import ModelInputs, ParsedAnswer, VlmAdapter
from vlm_ros.models.florence2 import image_processor_transform
from vlm_ros.models.parsing import ResizeTransform, clean_label

__all__ = ["Blip2Adapter", "InstructBlipAdapter"]


class _BlipFamily(VlmAdapter):
    """What BLIP-2 and InstructBLIP share: prompt templates, no grounding, generate() through the engine."""

    supports_static_cache = False
    can_ground = False
    describe_prompt: ClassVar[str]
    answer_template: ClassVar[str]

    def __init__(self, model: torch.nn.Module, processor: Any):
        super().__init__(model, processor)
        text_config = model.config.text_config
        # transformers' InstructBlipConfig does not mirror its language model's is_encoder_decoder (BLIP-2's
        # does); the engine reads it on the outer config to know whether generate() returns the prompt.
        if getattr(text_config, "is_encoder_decoder", False) and not model.config.is_encoder_decoder:
            model.config.is_encoder_decoder = True

    def prompt(self, request: Request) -> str:
        # The processor puts the Q-Former's image tokens before the text itself: no placeholder in the prompt.
        instruction = " ".join(request.instruction.split())
        if request.task == Task.DESCRIBE or not instruction:
            return self.describe_prompt
        return self.answer_template.format(instruction)

    def input_transform(self, frame: Frame, tensors: dict[str, torch.Tensor]) -> ResizeTransform:
        h, w = tensors["pixel_values"].shape[-2:]
        return image_processor_transform(self.processor.image_processor, frame.width, frame.height, (int(h), int(w)))

    @property
    def generation_config(self) -> Any:
        """The language model's: the outer generate() hands the embeddings to the language model's generate()."""
        return self.model.language_model.generation_config

    @property
    def eos_token_ids(self) -> set[int]:
        """The language model's end tokens: its generate() (not the outer model's config) decides when to stop."""
        ids: set[int] = set()
        for config in (self.model.language_model.generation_config, self.model.generation_config):
            eos = config.eos_token_id
            ids |= set(eos if isinstance(eos, (list, tuple)) else [eos])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids - {None}

    def parse(self, raw_text: str, inputs: ModelInputs, frame: Frame, request: Request) -> ParsedAnswer:
        return ParsedAnswer(clean_label(raw_text))


class Blip2Adapter(_BlipFamily):
    family = "blip2"
    model_class = Blip2ForConditionalGeneration
    describe_prompt = ""
    answer_template = "Question: {} Answer:"

    def parse(self, raw_text: str, inputs: ModelInputs, frame: Frame, request: Request) -> ParsedAnswer:
        # BLIP-2 was trained on one-line captions and answers; OPT-based checkpoints end them with a newline
        # (LAVIS stops OPT at "\n") and may run on after it: keep the first non-empty line.
        lines = [ln for ln in raw_text.strip().splitlines() if ln.strip()]
        return ParsedAnswer(clean_label(lines[0]) if lines else "")


class InstructBlipAdapter(_BlipFamily):
    family = "instructblip"
    model_class = InstructBlipForConditionalGeneration
    describe_prompt = "A short image description:"
    answer_template = "Question: {} Short answer:"
