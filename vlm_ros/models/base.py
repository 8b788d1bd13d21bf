"""The adapter interface: what one VLM family needs to go through the shared engine and pipeline.

An adapter owns a Hugging Face model and its processor and knows the family's habits: how to phrase a
task as a prompt, how the processor resizes the image, which inputs feed the vision encoder, and how to turn
the model's text back into targets in source-image pixels. Generation itself is the engine's job.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from vlm_ros.core.types import Box, Frame, Request
from vlm_ros.models.parsing import ParseResult, PolygonResult, ResizeTransform, map_box, map_points


def language_model(model: torch.nn.Module) -> torch.nn.Module | None:
    """The decoder stack (a module with `layers` and `embed_tokens`) of a VLM or language model, or None."""
    for path in ("model.language_model", "language_model", "model.text_model", "model"):
        mod = model
        for name in path.split("."):
            mod = getattr(mod, name, None)
            if mod is None:
                break
        if mod is not None and hasattr(mod, "layers") and hasattr(mod, "embed_tokens"):
            return mod
    return None


class CheckpointError(ValueError):
    """A model directory that would load wrong: weights that do not fit the config, or an unsupported layout."""


MAX_LISTED_KEYS = 5  # keys named per kind in a refusal; the rest are counted


def load_checked_model(model_class: Any, path: str | Path, dtype: torch.dtype | None = None,
                       **kwargs: Any) -> torch.nn.Module:
    """`model_class.from_pretrained`, refused when the checkpoint's tensors do not match the config.

    transformers only warns about missing or unexpected keys and initialises missing tensors randomly: a model
    that would then answer with garbage. Missing, unexpected and shape-mismatched keys raise CheckpointError
    naming the first few of each kind.
    """
    model, info = model_class.from_pretrained(path, dtype=dtype or torch.float32, output_loading_info=True,
                                              ignore_mismatched_sizes=True, **kwargs)
    problems = []
    for kind in ("missing", "unexpected"):
        keys = sorted(info.get(f"{kind}_keys") or ())
        if keys:
            problems.append(f"{len(keys)} {kind} ({_first_few(keys)})")
    mismatched = sorted(info.get("mismatched_keys") or ())
    if mismatched:
        shapes = [f"{key} {tuple(ckpt)} vs {tuple(expected)}" for key, ckpt, expected in mismatched]
        problems.append(f"{len(mismatched)} with another shape ({_first_few(shapes)})")
    problems += [f"error: {msg}" for msg in info.get("error_msgs") or ()]
    if problems:
        raise CheckpointError(f"the weights in '{path}' do not match its config.json for {model_class.__name__}: "
                              + "; ".join(problems) + ". Loading them would leave random weights: refused")
    return model


def _first_few(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED_KEYS])
    return shown + (f", ... {len(items) - MAX_LISTED_KEYS} more" if len(items) > MAX_LISTED_KEYS else "")


@dataclass
class ModelInputs:
    """Processor output for one (frame, request), on the model's device, plus how to map boxes back."""

    tensors: dict[str, torch.Tensor]
    transform: ResizeTransform  # model-input image <- source image
    frame_key: tuple | None = None  # identifies the frame for the engine's vision-feature cache
    frame_image: Any = None  # the frame's image, kept alive by that cache while its id() is in a key

    @property
    def prompt_length(self) -> int:
        return int(self.tensors["input_ids"].shape[-1])


@dataclass
class ParsedAnswer:
    """The model's text made useful: answer text (location tokens removed), labelled source-pixel boxes and, for
    models that point, labelled source-pixel points (x, y)."""

    text: str
    boxes: list[tuple[str, Box]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # reasons for model output that was refused
    points: list[tuple[str, tuple[float, float]]] = field(default_factory=list)


class VlmAdapter(ABC):
    """One VLM family. Subclasses set `family`, `model_class` and implement `prompt` and `parse`."""

    family: ClassVar[str]
    model_class: ClassVar[Any]  # the transformers class that from_pretrained loads
    # The engine runs its own static-cache decode loop for decoder-only models; encoder-decoder and other
    # special generate() paths set this False and go through transformers' generate() with the same hooks.
    supports_static_cache: ClassVar[bool] = True
    # Inputs consumed only by the vision encoder: dropped from the forward call when features are cached.
    vision_input_names: ClassVar[tuple[str, ...]] = ("pixel_values",)
    can_ground: ClassVar[bool] = True

    def __init__(self, model: torch.nn.Module, processor: Any):
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)

    # --- loading ------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None,
                        local_files_only: bool = True) -> VlmAdapter:
        """Load model and processor exactly as a user with downloaded weights would."""
        from transformers import AutoProcessor

        kwargs = {"local_files_only": local_files_only}
        model = load_checked_model(cls.model_class, path, dtype, **kwargs).to(device)
        processor = AutoProcessor.from_pretrained(path, **kwargs)
        return cls(model, processor)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # --- per family -------------------------------------------------------------------------------------
    @abstractmethod
    def prompt(self, request: Request) -> str:
        """The full text prompt (with the family's image placeholder) for a request."""

    @abstractmethod
    def parse(self, raw_text: str, inputs: ModelInputs, frame: Frame, request: Request) -> ParsedAnswer:
        """Model text -> answer text and boxes in source-image pixels. Untrusted input: never raises on content."""

    def polygon_prompt(self, label: str) -> str | None:
        """The family's prompt for the outline polygons of the object `label`; None = the family has none."""
        return None

    def parse_polygons(self, raw_text: str, inputs: ModelInputs) -> PolygonResult:
        """Model text for a `polygon_prompt` -> polygons in source-image pixels (families that have one)."""
        raise NotImplementedError(f"{self.family} has no polygon output")

    def input_transform(self, frame: Frame, tensors: dict[str, torch.Tensor]) -> ResizeTransform:
        """How the processor made the model-input image from the frame (default: a plain resize)."""
        h, w = tensors["pixel_values"].shape[-2:]
        return ResizeTransform.resize(frame.width, frame.height, int(w), int(h))

    def process(self, image: np.ndarray, prompt: str) -> dict[str, torch.Tensor]:
        """Run the processor on one RGB image and prompt (override for processors with other signatures)."""
        # channels_last: for images only a few pixels tall the processor's layout guess is wrong
        return dict(self.processor(images=[image], text=[prompt], return_tensors="pt",
                                   input_data_format="channels_last"))

    # --- shared -----------------------------------------------------------------------------------------
    def prepare(self, frame: Frame, request: Request) -> ModelInputs:
        return self.prepare_prompt(frame, self.prompt(request))

    def prepare_prompt(self, frame: Frame, prompt: str) -> ModelInputs:
        """Model inputs for one frame and a full text prompt (the family's image placeholder included)."""
        tensors = self.process(frame.image, prompt)
        transform = self.input_transform(frame, tensors)
        dtype = next(self.model.parameters()).dtype
        device = self.device
        tensors = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in tensors.items()}
        return ModelInputs(tensors, transform, frame_key=(frame.camera, frame.stamp_ns, id(frame.image)),
                           frame_image=frame.image)

    def encode_vision(self, inputs: ModelInputs) -> dict[str, Any]:
        """Vision features for `mm_encoder_outputs` (transformers' hook to skip the encoder on a cached frame)."""
        vision = {k: inputs.tensors[k] for k in inputs.tensors
                  if k in self.vision_input_names or k.startswith("image_")}
        return {"image": self.model.get_image_features(**vision, return_dict=True)}

    def forward_inputs(self, inputs: ModelInputs) -> dict[str, torch.Tensor]:
        """The prefill's inputs once the vision features come from the cache."""
        return {k: v for k, v in inputs.tensors.items() if k not in self.vision_input_names}

    @property
    def generation_config(self) -> Any:
        """The generation config the model's own generate() applies (the engines' DecodingRules come from it)."""
        return self.model.generation_config

    @property
    def eos_token_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        if ids is None:
            ids = self.tokenizer.eos_token_id
        return set(ids if isinstance(ids, (list, tuple)) else [ids]) - {None}

    def decode_text(self, token_ids: list[int]) -> str:
        """Generated ids -> text. Special tokens are dropped, except location tokens (`<loc...>`), which carry boxes."""
        text = self.tokenizer.decode(token_ids, skip_special_tokens=False)
        for tok in self._stripped_tokens:
            text = text.replace(tok, "")
        return text.strip()

    @functools.cached_property
    def _stripped_tokens(self) -> tuple[str, ...]:
        return tuple(t for t in self.tokenizer.all_special_tokens if not t.startswith("<loc"))

    @staticmethod
    def boxes_from(result: ParseResult, transform: ResizeTransform | None, frame: Frame) -> list[tuple[str, Box]]:
        """Parsed boxes (in model-input pixels when a transform is given) -> source pixels, clipped."""
        out = []
        for pb in result.boxes:
            box = map_box(pb.box, transform) if transform is not None else pb.box
            box = box.clipped(frame.width, frame.height)
            if box.area > 0:
                out.append((pb.label, box))
        return out

    @staticmethod
    def points_from(result: ParseResult, transform: ResizeTransform | None, frame: Frame
                    ) -> list[tuple[str, tuple[float, float]]]:
        """Parsed points (in model-input pixels when a transform is given) -> source pixels, clipped."""
        if not result.points:
            return []
        xy = np.array([(p.x, p.y) for p in result.points], np.float64)  # (K, 2)
        if transform is not None:
            xy = map_points(xy, transform)
        return [(p.label, (float(x), float(y))) for p, (x, y) in zip(result.points, xy, strict=True)]
