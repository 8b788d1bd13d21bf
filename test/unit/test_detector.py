"""Open-vocabulary detector pairing: NMS/validation, and OWLv2 / OWL-ViT / Grounding DINO
boxes in source pixels, re-derived from the raw model outputs with each family's documented box convention."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vlm_ros.core.types import Box, Frame
from vlm_ros.models.detector import OpenVocabularyDetector, nms, phrase_token_spans, validate_detections
from vlm_ros.testing.tiny_detector import BERT_IDS, build_tiny_grounding_dino, build_tiny_owlv2, build_tiny_owlvit

W, H = 160, 120  # non-square: OWLv2 pads to a square, the others do not


# --- validation and NMS -------------------------------------------------------------------------------------
def test_validate_detections():
    raw = [
        ("a", 0.9, [10.0, 10.0, 50.0, 40.0]),
        ("b", 0.8, [-20.0, 100.0, 30.0, 500.0]),  # clipped to the image
        ("c", math.nan, [0.0, 0.0, 10.0, 10.0]),
        ("d", 0.7, [0.0, math.inf, 10.0, 10.0]),
        ("e", 0.7, [50.0, 10.0, 10.0, 40.0]),  # inverted
        ("f", 0.7, [10.0, 10.0, 10.5, 40.0]),  # under a pixel wide
        ("g", 0.7, [170.0, 10.0, 200.0, 40.0]),  # outside the image
    ]
    out = validate_detections(raw, W, H)
    assert [(label, s, (b.x_min, b.y_min, b.x_max, b.y_max)) for label, s, b in out] == [
        ("a", 0.9, (10.0, 10.0, 50.0, 40.0)), ("b", 0.8, (0.0, 100.0, 30.0, 120.0))]


def test_nms_is_per_label_and_sorted():
    dets = [("mug", 0.5, Box(0, 0, 10, 10)), ("mug", 0.9, Box(1, 1, 11, 11)), ("ball", 0.7, Box(0, 0, 10, 10)),
            ("mug", 0.6, Box(50, 50, 60, 60))]
    assert [(label, s) for label, s, _ in nms(dets, 0.5)] == [("mug", 0.9), ("ball", 0.7), ("mug", 0.6)]
    assert len(nms(dets, 1.0)) == 4


def test_phrase_token_spans():
    cls, sep, dot = BERT_IDS["[CLS]"], BERT_IDS["[SEP]"], BERT_IDS["."]
    assert phrase_token_spans([cls, 7, 8, dot, 9, dot, sep], {cls, sep, dot}) == [(1, 3), (4, 5)]


# --- the detectors ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def frame() -> Frame:
    return Frame(np.random.default_rng(2).integers(0, 256, (H, W, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def detectors(tmp_path_factory) -> dict[str, OpenVocabularyDetector]:
    builders = {"owlv2": build_tiny_owlv2, "owlvit": build_tiny_owlvit, "grounding-dino": build_tiny_grounding_dino,
                "mm-grounding-dino": lambda path: build_tiny_grounding_dino(path, mm=True)}
    return {name: OpenVocabularyDetector.from_pretrained(build(tmp_path_factory.mktemp(name)))
            for name, build in builders.items()}


def as_tuples(dets):
    return sorted((label, round(s, 5), tuple(round(v, 3) for v in (b.x_min, b.y_min, b.x_max, b.y_max)))
                  for label, s, b in dets)


def corners(cxcywh: torch.Tensor, sx: float, sy: float) -> list[float]:
    cx, cy, w, h = cxcywh.tolist()
    return [(cx - w / 2) * sx, (cy - h / 2) * sy, (cx + w / 2) * sx, (cy + h / 2) * sy]


@pytest.mark.parametrize("family", ["owlv2", "owlvit"])
def test_owl_boxes_are_in_source_pixels(detectors, frame, family):
    det = detectors[family]
    assert det.family == family
    phrases = ["red mug", "blue ball"]
    got = det.detect(frame, phrases, threshold=0.0, nms_iou=None)
    # expected from the raw outputs: OWL predicts normalised (cx, cy, w, h); OWLv2 over the image padded to a
    # square at the bottom/right (so both axes scale by max(W, H)), OWL-ViT over the plainly resized image
    inputs = det.processor(images=[frame.image], text=[[f"a photo of a {p}" for p in phrases]], return_tensors="pt")
    with torch.inference_mode():
        out = det.model(**inputs)
    sx, sy = (max(W, H), max(W, H)) if family == "owlv2" else (W, H)
    scores, labels = out.logits[0].max(dim=-1)
    raw = [(phrases[int(k)], float(s), corners(b, sx, sy))
           for s, k, b in zip(scores.sigmoid(), labels, out.pred_boxes[0], strict=True)]
    expected = validate_detections(raw, W, H)
    assert got and as_tuples(got) == as_tuples(expected)
    assert all(label in phrases for label, _, _ in got)
    assert [s for _, s, _ in got] == sorted((s for _, s, _ in got), reverse=True)


@pytest.mark.parametrize("family, cell_w, cell_h", [("owlv2", 40.0, 40.0), ("owlvit", 40.0, 30.0)])
def test_owl_grid_prior_boxes_land_on_known_source_pixels(detectors, frame, family, cell_w, cell_h):
    # The tiny OWL models predict their grid prior (a 4x4 grid, each box one cell large, centred on the cell's
    # bottom-right corner). OWLv2's grid covers the 160x160 padded square, OWL-ViT's the 160x120 image itself.
    got = {(round(b.x_min, 1), round(b.y_min, 1), round(b.x_max, 1), round(b.y_max, 1))
           for _, _, b in detectors[family].detect(frame, ["red mug", "blue ball"], threshold=0.0, nms_iou=None)}
    expected = set()
    for row in range(4):
        for col in range(4):
            cx, cy = (col + 1) * cell_w, (row + 1) * cell_h
            box = Box(cx - cell_w / 2, cy - cell_h / 2, cx + cell_w / 2, cy + cell_h / 2).clipped(W, H)
            if box.width >= 1 and box.height >= 1:
                expected.add((round(box.x_min, 1), round(box.y_min, 1), round(box.x_max, 1), round(box.y_max, 1)))
    assert got == expected
    if family == "owlv2":  # the bottom row lies in the padding below the source image and is gone
        assert (20.0, 20.0, 60.0, 60.0) in got and not any(y_min >= H for _, y_min, _, _ in got)
        assert len(got) == 12
    else:
        assert (20.0, 15.0, 60.0, 45.0) in got and len(got) == 16


@pytest.mark.parametrize("family", ["grounding-dino", "mm-grounding-dino"])
def test_grounding_dino_boxes_and_phrase_labels(detectors, frame, family):
    det = detectors[family]
    assert det.family == family
    phrases = ["Red mug", "blue ball"]
    got = det.detect(frame, phrases, threshold=0.0, nms_iou=None)
    inputs = det.processor(images=[frame.image], text=["red mug. blue ball."], return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    dot, cls, sep = BERT_IDS["."], BERT_IDS["[CLS]"], BERT_IDS["[SEP]"]
    assert ids[0] == cls and ids[-1] == sep and ids.count(dot) == 2  # the model's pinned delimiter ids
    spans = [(1, ids.index(dot)), (ids.index(dot) + 1, len(ids) - 2)]
    with torch.inference_mode():
        out = det.model(**inputs)
    probs = out.logits[0].sigmoid()  # (queries, max_text_len)
    raw = []
    for q in range(probs.shape[0]):  # Grounding DINO predicts normalised (cx, cy, w, h) over the unpadded image
        best = max(range(2), key=lambda k: float(probs[q, spans[k][0]:spans[k][1]].max()))
        raw.append((phrases[best], float(probs[q].max()), corners(out.pred_boxes[0, q], W, H)))
    expected = validate_detections(raw, W, H)
    assert got and as_tuples(got) == as_tuples(expected)


@pytest.mark.parametrize("family", ["owlv2", "owlvit", "grounding-dino", "mm-grounding-dino"])
def test_threshold_and_nms_only_remove(detectors, frame, family):
    det = detectors[family]
    phrases = ["red mug", "blue ball"]
    everything = det.detect(frame, phrases, threshold=0.0, nms_iou=None)
    scores = sorted(s for _, s, _ in everything)
    middle = scores[len(scores) // 2]
    above = det.detect(frame, phrases, threshold=middle, nms_iou=None)
    assert as_tuples(above) == as_tuples([d for d in everything if d[1] > middle])
    suppressed = det.detect(frame, phrases, threshold=0.0, nms_iou=0.3)
    assert set(as_tuples(suppressed)) <= set(as_tuples(everything))
    assert as_tuples(suppressed) == as_tuples(nms(everything, 0.3))
    assert det.detect(frame, phrases, threshold=1.0) == []
    assert det.detect(frame, [" ", ""]) == []
    for _, score, box in everything:
        assert 0.0 <= score <= 1.0 and 0 <= box.x_min < box.x_max <= W and 0 <= box.y_min < box.y_max <= H


def test_default_thresholds(detectors):
    assert detectors["owlv2"].default_threshold == 0.1
    assert detectors["grounding-dino"].default_threshold == 0.35


def test_from_pretrained_refuses_a_non_detector(tmp_path):
    from transformers import BertConfig

    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not an open-vocabulary detector"):
        OpenVocabularyDetector.from_pretrained(tmp_path)
