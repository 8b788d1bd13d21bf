"""PaliGemma and PaliGemma 2 (SigLIP + Gemma / Gemma 2, prefix-LM): task prefixes, `<locYYYY>` grounding.

Prompts are PaliGemma's task prefixes (big_vision's PaliGemma README and the model cards of the `-mix`
checkpoints): ``caption en``, ``answer en <question>``, ``detect <object> ; <object>``. The processor puts
the image tokens and ``<bos>`` in front and ``\\n`` behind. ``detect`` output is ``<locY1><locX1><locY2><locX2>
label`` entries joined by `` ; ``, normalised over the model input, which the SigLIP processor makes by a plain
(aspect-changing) resize of the whole image: so the boxes are normalised over the source image as well.
"""

from __future__ import annotations

import re
import warnings

import torch
from transformers import PaliGemmaForConditionalGeneration

from vlm_ros.core.types import Frame, Request, Task
from vlm_ros.models.base import ModelInputs, ParsedAnswer, VlmAdapter
from vlm_ros.models.parsing import ResizeTransform, parse_paligemma
from vlm_ros.models.phrases import object_phrases

__all__ = ["PaliGemmaAdapter", "strip_paligemma_tokens"]

_LOC_OR_SEG = re.compile(r"<(?:loc\d{4}|seg\d{3})>")


def strip_paligemma_tokens(text: str) -> str:
    """Answer text without `<locYYYY>` / `<segNNN>` tokens, whitespace collapsed."""
    return " ".join(_LOC_OR_SEG.sub(" ", text).split())


class PaliGemmaAdapter(VlmAdapter):
    """PaliGemma (Gemma) and PaliGemma 2 (Gemma 2) checkpoints, `pt` and `mix` alike."""

    family = "paligemma"
    model_class = PaliGemmaForConditionalGeneration
    language = "en"

    def prompt(self, request: Request) -> str:
        image_token = getattr(self.processor, "image_token", "<image>")
        instruction = " ".join(request.instruction.split())
        phrases = object_phrases(instruction, referring=True) if request.task == Task.GROUND else []
        if phrases:
            task = "detect " + " ; ".join(phrases)
        elif request.task == Task.ANSWER and instruction:
            task = f"answer {self.language} {instruction}"
        else:
            task = f"caption {self.language}"
        # One image token marks where the processor expands the image (and then adds <bos> and "\n").
        return f"{image_token}{task}"

    def process(self, image, prompt: str) -> dict[str, torch.Tensor]:
        with warnings.catch_warnings():  # the processor's numpy use in its training-labels path warns
            warnings.simplefilter("ignore", DeprecationWarning)
            tensors = dict(self.processor(images=[image], text=[prompt], return_tensors="pt",
                                          input_data_format="channels_last"))
        tensors.pop("labels", None)  # the processor's training labels: not a model input for inference
        return tensors

    def input_transform(self, frame: Frame, tensors: dict[str, torch.Tensor]) -> ResizeTransform:
        h, w = tensors["pixel_values"].shape[-2:]  # (1, 3, H, W): a plain resize of the whole image
        return ResizeTransform.resize(frame.width, frame.height, int(w), int(h))

    def parse(self, raw_text: str, inputs: ModelInputs, frame: Frame, request: Request) -> ParsedAnswer:
        if request.task != Task.GROUND and "<loc" not in raw_text:
            return ParsedAnswer(text=raw_text.strip())
        # Coordinates are normalised over the model input; with a plain resize that equals the source image,
        # so the parser works in input pixels and map_box undoes the resize exactly.
        t = inputs.transform
        in_w, in_h = t.src_w * t.scale_x, t.src_h * t.scale_y
        result = parse_paligemma(raw_text, in_w, in_h)
        return ParsedAnswer(strip_paligemma_tokens(raw_text), self.boxes_from(result, t, frame), result.dropped)
