"""Box-prompted segmenters (tiny random SAM and SAM 2 built from configs): masks in source pixels, re-derived from
the raw model outputs with each family's documented prompt and mask conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlm_ros.core.types import Box, Frame
from vlm_ros.models.segmenter import BoxSegmenter, ImageOnlySam2Processor
from vlm_ros.testing.tiny_segmenter import IMAGE_SIZE, build_tiny_sam, build_tiny_sam2

W, H = 160, 120  # non-square: SAM pads to a square, SAM 2 resizes each axis on its own
BOXES = [Box(10, 20, 80, 90), Box(0, 0, 50, 50), Box(100.5, 30.25, 160, 120)]


@pytest.fixture(scope="module")
def segmenters(tmp_path_factory):
    root = tmp_path_factory.mktemp("segmenters")
    return {"sam": BoxSegmenter.from_pretrained(build_tiny_sam(root / "sam")),
            "sam2": BoxSegmenter.from_pretrained(build_tiny_sam2(root / "sam2"))}


@pytest.fixture(scope="module")
def frame():
    return Frame(np.random.default_rng(3).integers(0, 256, (H, W, 3), dtype=np.uint8))


def test_families_and_processors(segmenters):
    assert segmenters["sam"].family == "sam"
    assert segmenters["sam2"].family == "sam2"
    try:
        import torchvision  # noqa: F401
    except ImportError:  # Sam2Processor's image half needs torchvision: the image-only steps stand in
        assert isinstance(segmenters["sam2"].processor, ImageOnlySam2Processor)


def test_sam_masks_follow_its_longest_side_resize_and_padding(segmenters, frame):
    seg = segmenters["sam"]
    got = seg.segment(frame, BOXES)
    assert len(got) == len(BOXES) and all(m.shape == (H, W) and m.dtype == bool for m in got)
    # SAM: the longest side resized to 64 (160x120 -> 64x48), padded at the bottom to 64x64; box prompts scaled by
    # the same 64 / 160; the low-res masks cover the padded square: upsampled to it, cropped, resized to the source
    s = IMAGE_SIZE / W
    inputs = seg.processor(images=[frame.image], return_tensors="pt", input_data_format="channels_last")
    prompts = torch.tensor([[[b.x_min * s, b.y_min * s, b.x_max * s, b.y_max * s] for b in BOXES]])
    with torch.inference_mode():
        low = seg.model(pixel_values=inputs["pixel_values"], input_boxes=prompts, multimask_output=False).pred_masks[0]
    square = F.interpolate(low.float(), (IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    expected = F.interpolate(square[..., : round(H * s), :], (H, W), mode="bilinear", align_corners=False) > 0
    assert [m.tolist() for m in got] == [e[0].tolist() for e in expected]


def test_sam2_masks_follow_its_plain_resize(segmenters, frame):
    seg = segmenters["sam2"]
    got = seg.segment(frame, BOXES)
    assert len(got) == len(BOXES) and all(m.shape == (H, W) and m.dtype == bool for m in got)
    # SAM 2: a plain resize of the whole image to 64x64, ImageNet mean/std; box prompts scaled per axis; the
    # low-res masks cover the whole image: resized straight back to the source size
    sx, sy = IMAGE_SIZE / W, IMAGE_SIZE / H
    pixels = seg.processor(frame.image, BOXES)["pixel_values"]
    prompts = torch.tensor([[[b.x_min * sx, b.y_min * sy, b.x_max * sx, b.y_max * sy] for b in BOXES]])
    with torch.inference_mode():
        low = seg.model(pixel_values=pixels, input_boxes=prompts, multimask_output=False).pred_masks[0]
    expected = F.interpolate(low.float(), (H, W), mode="bilinear", align_corners=False) > 0
    assert [m.tolist() for m in got] == [e[0].tolist() for e in expected]


def test_image_only_sam2_steps_put_a_box_where_its_pixels_are():
    # a white square in a black 160x120 frame, prompted by its own box: after the resize, the scaled box covers
    # the white pixels of the model input (normalised white is (1 - mean) / std > 0, black < 0)
    image = np.zeros((H, W, 3), np.uint8)
    image[30:90, 40:120] = 255
    proc = ImageOnlySam2Processor({"size": {"height": 64, "width": 64}})
    out = proc(image, [Box(40, 30, 120, 90)])
    pixels, (x0, y0, x1, y1) = out["pixel_values"][0, 0], out["input_boxes"][0, 0].tolist()
    assert pixels.shape == (64, 64) and (x0, y0, x1, y1) == pytest.approx((16, 16, 48, 48))
    assert (pixels[17:47, 17:47] > 0).all() and (pixels[:15] < 0).all() and (pixels[:, 49:] < 0).all()
    mask = proc.post_process_masks(torch.ones(1, 1, 16, 16), H, W)
    assert mask.shape == (1, 1, H, W) and bool(mask.all())


def test_no_boxes_no_work(segmenters, frame):
    assert segmenters["sam"].segment(frame, []) == []


def test_a_directory_of_another_model_type_is_refused(tmp_path):
    from vlm_ros.testing.tiny_detector import build_tiny_owlv2

    with pytest.raises(ValueError, match="not a box-prompted segmenter"):
        BoxSegmenter.from_pretrained(build_tiny_owlv2(tmp_path / "owl"))
