"""Open-vocabulary detection for models that cannot ground: the VLM names the objects, a detector boxes them.

:class:`OpenVocabularyDetector` puts OWLv2, OWL-ViT or Grounding DINO behind one small interface,
``detect(frame, phrases, threshold) -> [(label, score, Box)]`` with boxes in source-image pixels; the phrases come
from :mod:`vlm_ros.models.phrases` (the instruction's objects, else the answer's).

Boxes come from the processors' own post-processing with ``target_sizes`` = the source image size (OWLv2's
post-processor undoes its pad-to-square itself), then are validated here: finite, clipped to the image,
positive area; duplicates of one label are merged by non-maximum suppression.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from vlm_ros.core.types import Box, Frame
from vlm_ros.models.base import load_checked_model

__all__ = [
    "Detection",
    "OpenVocabularyDetector",
    "nms",
    "phrase_token_spans",
    "validate_detections",
]

Detection = tuple[str, float, Box]  # (label, score, box in source pixels)

# ------------------------------------------------------------------------------------------------
# non-maximum suppression (pure)


def nms(detections: list[Detection], iou_threshold: float) -> list[Detection]:
    """Greedy per-label NMS: keeps the best-scoring box of each overlapping group; sorted by score, descending."""
    kept: list[Detection] = []
    for det in sorted(detections, key=lambda d: -d[1]):
        if all(k[0] != det[0] or k[2].iou(det[2]) <= iou_threshold for k in kept):
            kept.append(det)
    return kept


# ------------------------------------------------------------------------------------------------
# the detector


@dataclass(frozen=True)
class _Family:
    model_class: str  # transformers class name
    box_threshold: float  # default score threshold
    text_threshold: float | None  # Grounding DINO's per-token threshold


class OpenVocabularyDetector:
    """OWLv2 / OWL-ViT / Grounding DINO with one interface. Not thread-safe (one query at a time).

    Default thresholds: OWLv2 and OWL-ViT 0.1 (the value in transformers' OWL examples), Grounding DINO 0.35
    for boxes and 0.25 for text tokens (the defaults of the Grounding DINO reference demo).
    """

    FAMILIES: ClassVar[dict[str, _Family]] = {
        "owlv2": _Family("Owlv2ForObjectDetection", 0.1, None),
        "owlvit": _Family("OwlViTForObjectDetection", 0.1, None),
        "grounding-dino": _Family("GroundingDinoForObjectDetection", 0.35, 0.25),
        "mm-grounding-dino": _Family("MMGroundingDinoForObjectDetection", 0.35, 0.25),
    }
    # OWL models were trained with CLIP-style prompts; transformers' examples query "a photo of a cat".
    owl_template: str = "a photo of a {}"

    def __init__(self, model: torch.nn.Module, processor: Any, family: str):
        if family not in self.FAMILIES:
            raise ValueError(f"unsupported detector family {family!r}; supported: {sorted(self.FAMILIES)}")
        self.model = model.eval()
        self.processor = processor
        self.family = family
        self._spec = self.FAMILIES[family]

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None,
                        local_files_only: bool = True) -> OpenVocabularyDetector:
        """Load a detector checkpoint directory; the family comes from its config.json ``model_type``."""
        import transformers
        from transformers import AutoConfig, AutoProcessor

        kwargs = {"local_files_only": local_files_only}
        family = AutoConfig.from_pretrained(path, **kwargs).model_type
        if family not in cls.FAMILIES:
            raise ValueError(f"{path}: model_type {family!r} is not an open-vocabulary detector we support "
                             f"({sorted(cls.FAMILIES)})")
        model_class = getattr(transformers, cls.FAMILIES[family].model_class)
        model = load_checked_model(model_class, path, dtype, **kwargs).to(device)
        processor = AutoProcessor.from_pretrained(path, **kwargs)
        return cls(model, processor, family)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def default_threshold(self) -> float:
        return self._spec.box_threshold

    @torch.inference_mode()
    def detect(self, frame: Frame, phrases: list[str], threshold: float | None = None, *,
               text_threshold: float | None = None, nms_iou: float | None = 0.5,
               max_detections: int = 100) -> list[Detection]:
        """Boxes for the given phrases in `frame`, as (label, score, box in source pixels), best first.

        `label` is one of `phrases` (exactly as given). `threshold` defaults to the family's default;
        `text_threshold` is used by Grounding DINO only; `nms_iou=None` turns NMS off.
        """
        phrases = [p.strip() for p in phrases if p and p.strip()]
        if not phrases:
            return []
        threshold = self._spec.box_threshold if threshold is None else float(threshold)
        if not math.isfinite(threshold):
            raise ValueError(f"threshold must be finite, got {threshold}")
        if self.family.startswith("owl"):
            raw = self._detect_owl(frame, phrases, threshold)
        else:
            tt = self._spec.text_threshold if text_threshold is None else float(text_threshold)
            raw = self._detect_grounding_dino(frame, phrases, threshold, tt)
        valid = validate_detections(raw, frame.width, frame.height)
        out = nms(valid, nms_iou) if nms_iou is not None else sorted(valid, key=lambda d: -d[1])
        return out[:max_detections]

    # --- families ---------------------------------------------------------------------------------------
    def _inputs(self, frame: Frame, text: Any, **text_kwargs: Any) -> dict[str, torch.Tensor]:
        tensors = self.processor(images=[frame.image], text=text, return_tensors="pt", truncation=True,
                                 input_data_format="channels_last", **text_kwargs)
        dtype = next(self.model.parameters()).dtype
        return {k: (v.to(self.device, dtype) if v.is_floating_point() else v.to(self.device))
                for k, v in tensors.items()}

    def _detect_owl(self, frame: Frame, phrases: list[str], threshold: float) -> list[tuple[str, float, list[float]]]:
        queries = [self.owl_template.format(p) for p in phrases]
        inputs = self._inputs(frame, [queries])
        outputs = self.model(**inputs)
        # OWLv2 boxes are relative to the padded square input; its post-processor scales by max(h, w) itself.
        result = self.processor.post_process_grounded_object_detection(
            outputs, threshold=threshold, target_sizes=[(frame.height, frame.width)], text_labels=[phrases])[0]
        labels = result["labels"].tolist()
        return [(phrases[i], float(s), [float(v) for v in b])
                for i, s, b in zip(labels, result["scores"].tolist(), result["boxes"].tolist(), strict=True)]

    def _detect_grounding_dino(self, frame: Frame, phrases: list[str], threshold: float,
                               text_threshold: float) -> list[tuple[str, float, list[float]]]:
        # Grounding DINO's text format: lower-case phrases, each ended by "." ("red mug. blue ball.").
        clean = [" ".join(p.lower().replace(".", " ").replace("?", " ").split()) for p in phrases]
        keep_idx = [i for i, c in enumerate(clean) if c]
        if not keep_idx:
            return []
        text = " ".join(clean[i] + "." for i in keep_idx)
        # the text tower reads at most max_text_len tokens; a truncated last phrase falls back to decoded labels
        inputs = self._inputs(frame, [text], max_length=int(self.model.config.max_text_len))
        outputs = self.model(**inputs)
        result = self.processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=threshold, text_threshold=text_threshold,
            target_sizes=[(frame.height, frame.width)])[0]
        # Label each kept query with the phrase whose tokens it scores highest (the processor's own text
        # labels are decoded token fragments, which need not equal any phrase).
        probs = outputs.logits[0].sigmoid()  # (Q, max_text_len)
        kept = probs.max(dim=-1).values > threshold  # the processor's own selection, in the same order
        spans = phrase_token_spans(inputs["input_ids"][0].tolist(), self._delimiter_ids())
        labels: list[str] = []
        if len(spans) == len(keep_idx) and int(kept.sum()) == len(result["scores"]):
            for q in kept.nonzero(as_tuple=True)[0].tolist():
                best = max(range(len(spans)), key=lambda k: float(probs[q, spans[k][0]:spans[k][1]].max()))
                labels.append(phrases[keep_idx[best]])
        else:  # tokenisation we cannot align: fall back to the processor's decoded labels
            labels = [str(t).strip() for t in result["text_labels"]]
        return [(label, float(s), [float(v) for v in b])
                for label, s, b in zip(labels, result["scores"].tolist(), result["boxes"].tolist(), strict=True)]

    def _delimiter_ids(self) -> set[int]:
        tok = getattr(self.processor, "tokenizer", self.processor)
        ids = {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id}
        for t in (".", "?"):
            ids.add(tok.convert_tokens_to_ids(t))
        return {i for i in ids if i is not None}


def phrase_token_spans(input_ids: list[int], delimiters: set[int]) -> list[tuple[int, int]]:
    """[start, end) token positions of each phrase between delimiter tokens ([CLS], ".", [SEP]...)."""
    spans, start = [], None
    for i, t in enumerate(input_ids):
        if t in delimiters:
            if start is not None:
                spans.append((start, i))
            start = None
        elif start is None:
            start = i
    if start is not None:
        spans.append((start, len(input_ids)))
    return spans


def validate_detections(raw: list[tuple[str, float, list[float]]], width: int, height: int,
                        min_size: float = 1.0) -> list[Detection]:
    """Keep detections with a finite score and 4 finite, ordered corners; clip them to the image; drop boxes
    narrower or lower than `min_size` pixels after clipping (nothing a robot could act on)."""
    out: list[Detection] = []
    for label, score, corners in raw:
        if len(corners) != 4 or not math.isfinite(score) or not all(math.isfinite(v) for v in corners):
            continue
        x1, y1, x2, y2 = corners
        if x2 < x1 or y2 < y1:
            continue
        box = Box(x1, y1, x2, y2).clipped(width, height)
        if box.width >= min_size and box.height >= min_size and box.area > 0:
            out.append((label, score, box))
    return out
