"""Box-prompted segmentation: SAM, SAM 2 or EdgeTAM turns each target's box into a mask in source pixels.

:class:`BoxSegmenter` loads a checkpoint directory with transformers (the family from its config's
``model_type``), prompts the model with all boxes of one frame in one forward pass (one mask per box,
``multimask_output=False``) and returns full-frame boolean masks. The caller validates and crops them.

Pre- and post-processing are the checkpoint's own processor's (SamProcessor: longest-side resize + pad, masks
cropped and resized back; Sam2Processor: plain resize to a square, masks resized back). Sam2Processor's image
half needs torchvision; where torchvision does not import, the same steps (resize to the configured size,
rescale, normalise; boxes scaled per axis; masks resized back bilinearly and thresholded at 0) run here from the
checkpoint's processor configuration, with OpenCV's bilinear resize in place of torchvision's.

Not supported: SAM 3 (``Sam3Model``, text-prompted: boxes and masks from a phrase, a detector and segmenter in
one). A tiny one builds from its config and runs on CPU here, but its processor, including the post-processing
that turns its queries into boxes, masks and presence scores, is torchvision-only, so nothing of the path a user
would run could be checked on this project's machines; it also takes one text prompt per forward pass.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from vlm_ros.core.types import Box, Frame

__all__ = ["BoxSegmenter", "ImageOnlySam2Processor"]

log = logging.getLogger(__name__)


class ImageOnlySam2Processor:
    """Sam2Processor's still-image path without torchvision, from the checkpoint's processor configuration."""

    def __init__(self, config: dict[str, Any]):
        size = config.get("size") or {"height": 1024, "width": 1024}
        self.height, self.width = int(size["height"]), int(size["width"])
        self.rescale_factor = float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 1.0
        mean = config.get("image_mean", [0.485, 0.456, 0.406]) if config.get("do_normalize", True) else [0.0] * 3
        std = config.get("image_std", [0.229, 0.224, 0.225]) if config.get("do_normalize", True) else [1.0] * 3
        self.mean = np.asarray(mean, np.float32).reshape(1, 1, 3)
        self.std = np.asarray(std, np.float32).reshape(1, 1, 3)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> ImageOnlySam2Processor:
        from transformers.image_processing_base import ImageProcessingMixin

        config, _ = ImageProcessingMixin.get_image_processor_dict(str(path), **kwargs)
        return cls(config)

    def __call__(self, image: np.ndarray, boxes: list[Box]) -> dict[str, torch.Tensor]:
        import cv2

        h, w = image.shape[:2]
        resized = cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_LINEAR)  # (S, S, 3)
        pixels = (resized.astype(np.float32) * self.rescale_factor - self.mean) / self.std
        scale = np.array([self.width / w, self.height / h] * 2, np.float32)
        corners = np.array([[b.x_min, b.y_min, b.x_max, b.y_max] for b in boxes], np.float32) * scale  # (N, 4)
        return {"pixel_values": torch.from_numpy(pixels.transpose(2, 0, 1).copy())[None],  # (1, 3, S, S)
                "input_boxes": torch.from_numpy(corners)[None]}  # (1, N, 4)

    @staticmethod
    def post_process_masks(pred_masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(N, 1, h, w) logits -> (N, 1, height, width) bool, as Sam2ImageProcessor.post_process_masks."""
        up = torch.nn.functional.interpolate(pred_masks.float(), (height, width), mode="bilinear", align_corners=False)
        return up > 0.0


class BoxSegmenter:
    """SAM / SAM 2 / EdgeTAM, box-prompted, one forward pass per frame. Not thread-safe (one query at a time)."""

    FAMILIES: ClassVar[dict[str, str]] = {"sam": "SamModel", "sam2": "Sam2Model", "edgetam": "EdgeTamModel"}

    def __init__(self, model: torch.nn.Module, processor: Any, family: str):
        if family not in self.FAMILIES:
            raise ValueError(f"unsupported segmenter family {family!r}; supported: {sorted(self.FAMILIES)}")
        self.model = model.eval()
        self.processor = processor
        self.family = family

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None,
                        local_files_only: bool = True) -> BoxSegmenter:
        """Load a segmenter checkpoint directory; the family comes from its config.json ``model_type``."""
        import transformers
        from transformers import AutoConfig, AutoProcessor

        kwargs = {"local_files_only": local_files_only}
        family = AutoConfig.from_pretrained(path, **kwargs).model_type
        if family not in cls.FAMILIES:
            raise ValueError(f"{path}: model_type {family!r} is not a box-prompted segmenter we support "
                             f"({sorted(cls.FAMILIES)})")
        model_class = getattr(transformers, cls.FAMILIES[family])
        model = model_class.from_pretrained(path, dtype=dtype or torch.float32, **kwargs).to(device)
        try:
            processor = AutoProcessor.from_pretrained(path, **kwargs)
        except (ImportError, ValueError, TypeError, OSError) as exc:  # Sam2Processor's image half needs torchvision
            if family == "sam":
                raise
            log.info("SAM 2 processor unavailable (%s); using its image-only steps without torchvision", exc)
            processor = ImageOnlySam2Processor.from_pretrained(path, **kwargs)
        return cls(model, processor, family)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def segment(self, frame: Frame, boxes: list[Box]) -> list[np.ndarray]:
        """One (H, W) bool mask of the frame per box, in the order of `boxes`."""
        if not boxes:
            return []
        h, w = frame.height, frame.width
        if isinstance(self.processor, ImageOnlySam2Processor):
            inputs = self.processor(frame.image, boxes)
        else:
            corners = [[[b.x_min, b.y_min, b.x_max, b.y_max] for b in boxes]]
            inputs = dict(self.processor(images=[frame.image], input_boxes=corners, return_tensors="pt",
                                         input_data_format="channels_last"))
        dtype = next(self.model.parameters()).dtype
        model_inputs = {k: inputs[k].to(self.device, dtype) for k in ("pixel_values", "input_boxes")}  # both float
        pred = self.model(**model_inputs, multimask_output=False).pred_masks[0]  # (N, 1, h, w) logits
        if isinstance(self.processor, ImageOnlySam2Processor):
            masks = self.processor.post_process_masks(pred, h, w)
        elif self.family == "sam":
            masks = self.processor.post_process_masks(pred[None].float().cpu(), inputs["original_sizes"],
                                                      inputs["reshaped_input_sizes"])[0]
        else:
            masks = self.processor.post_process_masks([pred.float().cpu()], [(h, w)])[0]  # (N, 1, H, W)
        return [m[0].cpu().numpy().astype(bool) for m in masks]  # N x (H, W)
