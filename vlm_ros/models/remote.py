"""Adapter for a model served remotely: no weights here, only the family's phrasing and parsing.

prepare() encodes the frame (JPEG or PNG, optionally downscaled so its longer side is at most `max_image_side`)
into an OpenAI chat message with the task phrased exactly as the local adapter of the family phrases it;
parse() runs the same text -> boxes code as the local adapter, with the transform from the source image to
the model input the server's processor makes from the sent image:
  - embedded: boxes are bins over the whole image, so the sent size does not matter;
  - qwen2_5_vl: pixels of the smart-resized input, computed from the sent image size with the released
    checkpoints' processor settings (28-px grid, 3,136 .. 12,845,056 pixels);
  - florence2: 1000 bins over its plain-resized (768 x 768) input;
  - text (LLaVA and hosted chat models): answer text, no boxes.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

import cv2

from vlm_ros.core.types import Frame, Request
from vlm_ros.models.base import ModelInputs, ParsedAnswer
from vlm_ros.models.parsing import ResizeTransform

__all__ = ["FAMILIES", "RemoteAdapter", "RemoteInputs", "encode_frame"]

FAMILIES = ("embedded", "qwen2_5_vl", "florence2", "text")

# Qwen2.5-VL processor settings of the released checkpoints (preprocessor_config.json)
QWEN_FACTOR = 28  # patch_size 14 * merge_size 2
QWEN_MIN_PIXELS = 3136
QWEN_MAX_PIXELS = 12845056
FLORENCE2_INPUT = (768, 768)  # (w, h) of the released checkpoints' plain resize


@dataclass
class RemoteInputs(ModelInputs):
    """The chat request for one (frame, request): `messages` for /chat/completions, plus fields for the body."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    extra_body: dict[str, Any] = field(default_factory=dict)
    image_bytes: int = 0  # size of the encoded image
    sent_size: tuple[int, int] = (0, 0)  # (w, h) of the image sent
    input_size: tuple[int, int] = (0, 0)  # (w, h) of the model input the server makes from it

    @property
    def prompt_length(self) -> int:  # no token ids here: the server tokenizes
        return 0


def encode_frame(image, image_format: str = "jpeg", jpeg_quality: int = 90, max_image_side: int = 0
                 ) -> tuple[bytes, tuple[int, int]]:
    """RGB (H, W, 3) uint8 -> (encoded bytes, (w, h) sent); downscaled (area) when its longer side is too long."""
    h, w = image.shape[:2]
    if max_image_side and max(w, h) > max_image_side:
        s = max_image_side / max(w, h)
        w, h = max(1, round(w * s)), max(1, round(h * s))
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if image_format == "png":
        ok, data = cv2.imencode(".png", bgr)
    elif image_format == "jpeg":
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    else:
        raise ValueError(f"image_format must be 'jpeg' or 'png', got '{image_format}'")
    if not ok:
        raise RuntimeError(f"could not encode a {w}x{h} frame as {image_format}")
    return data.tobytes(), (w, h)


def qwen_input_size(width: int, height: int) -> tuple[int, int]:
    """(w, h) of the smart-resized Qwen2.5-VL input for an image of width x height (transformers' smart_resize)."""
    # the PIL-backend module: the torch one imports torchvision, which is not always importable
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    h, w = smart_resize(height, width, factor=QWEN_FACTOR, min_pixels=QWEN_MIN_PIXELS, max_pixels=QWEN_MAX_PIXELS)
    return int(w), int(h)


def embedded_loc_bins() -> int:
    """Location bins of the embedded model: from the shipped weights' config (the server serves the same model)."""
    from vlm_ros.embedded.model import DEFAULT_WEIGHTS_DIR, EmbeddedConfig

    config_file = DEFAULT_WEIGHTS_DIR / "embedded_config.json"
    if config_file.is_file():
        return int(json.loads(config_file.read_text())["config"]["loc_bins"])
    return EmbeddedConfig().loc_bins


class RemoteAdapter:
    """The model-less half of a VLM family, for the remote engine (same prepare/parse interface as VlmAdapter)."""

    remote: ClassVar[bool] = True

    def __init__(self, family: str, image_format: str, jpeg_quality: int, max_image_side: int,
                 loc_bins: int | None = None):
        if family not in FAMILIES:
            raise ValueError(f"remote family must be one of {', '.join(FAMILIES)}; got '{family}'")
        if image_format not in ("jpeg", "png"):
            raise ValueError(f"image_format must be 'jpeg' or 'png', got '{image_format}'")
        if not 1 <= jpeg_quality <= 100 or max_image_side < 0:
            raise ValueError("jpeg_quality must be in [1, 100] and max_image_side >= 0")
        self.family = family
        self.can_ground = family != "text"
        self.image_format, self.jpeg_quality, self.max_image_side = image_format, jpeg_quality, max_image_side
        self.loc_bins = loc_bins if loc_bins is not None else (embedded_loc_bins() if family == "embedded" else 0)

    # --- request ------------------------------------------------------------------------------------------
    def user_text(self, request: Request) -> str:
        """The user turn, phrased as the local adapter of the family phrases it."""
        if self.family == "embedded":
            from vlm_ros.models.llava import EmbeddedAdapter

            return EmbeddedAdapter.instruction(request)
        if self.family == "qwen2_5_vl":
            from vlm_ros.models.qwen2_5_vl import Qwen25VLAdapter

            return Qwen25VLAdapter.user_text(request)
        if self.family == "florence2":
            from vlm_ros.models.florence2 import task_prompt

            task, text = task_prompt(request)
            return task + text
        from vlm_ros.models.llava import LlavaAdapter

        return LlavaAdapter.instruction(request)

    def input_size(self, sent_w: int, sent_h: int) -> tuple[int, int]:
        """(w, h) of the model input the server's processor makes from the sent image."""
        if self.family == "qwen2_5_vl":
            return qwen_input_size(sent_w, sent_h)
        if self.family == "florence2":
            return FLORENCE2_INPUT
        return sent_w, sent_h

    def prepare(self, frame: Frame, request: Request) -> RemoteInputs:
        data, (w, h) = encode_frame(frame.image, self.image_format, self.jpeg_quality, self.max_image_side)
        mime = "image/png" if self.image_format == "png" else "image/jpeg"
        url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": self.user_text(request)}]
        in_w, in_h = self.input_size(w, h)
        # the sent image is a plain resize of the source, and each family's input a plain resize of that
        transform = ResizeTransform.resize(frame.width, frame.height, in_w, in_h)
        # Florence-2's <loc_N> are special tokens: vLLM and SGLang drop them unless asked not to
        extra = {"skip_special_tokens": False} if self.family == "florence2" else {}
        return RemoteInputs({}, transform, frame_key=(frame.camera, frame.stamp_ns, id(frame.image)),
                            messages=[{"role": "user", "content": content}], extra_body=extra, image_bytes=len(data),
                            sent_size=(w, h), input_size=(in_w, in_h))

    # --- answer -------------------------------------------------------------------------------------------
    def parse(self, raw_text: str, inputs: RemoteInputs, frame: Frame, request: Request) -> ParsedAnswer:
        if self.family == "embedded":
            from vlm_ros.models.llava import EmbeddedAdapter

            return EmbeddedAdapter.parse_text(raw_text, frame, self.loc_bins)
        if self.family == "qwen2_5_vl":
            from vlm_ros.models.qwen2_5_vl import Qwen25VLAdapter

            return Qwen25VLAdapter.parse_text(raw_text, inputs.transform, frame, request)
        if self.family == "florence2":
            from vlm_ros.models.florence2 import Florence2Adapter

            return Florence2Adapter.parse_text(raw_text, inputs.input_size, inputs.transform, frame, request)
        return ParsedAnswer(text=raw_text.strip())
