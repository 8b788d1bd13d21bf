"""PaliGemma / PaliGemma 2 adapter on tiny random checkpoints: task prefixes, engine == generate, <loc> boxes."""

from __future__ import annotations

import pytest
from model_checks import check_engine_equals_generate, frame, one_thread  # noqa: F401  (one_thread: autouse)

from vlm_ros.core.types import Request, Task
from vlm_ros.engine import TorchEngine
from vlm_ros.models.paligemma import PaliGemmaAdapter, strip_paligemma_tokens
from vlm_ros.testing.tiny_paligemma import IMAGE_SIZE, build_tiny_paligemma

REQUESTS = [Request(Task.DESCRIBE), Request(Task.ANSWER, "what color is the mug?"),
            Request(Task.GROUND, "where is the red mug?")]


@pytest.fixture(scope="module", params=[1, 2], ids=["paligemma", "paligemma2"])
def adapter(request, tmp_path_factory):
    path = build_tiny_paligemma(tmp_path_factory.mktemp(f"tiny_paligemma{request.param}"), version=request.param)
    return PaliGemmaAdapter.from_pretrained(path)


# --- generation through the engine ---------------------------------------------------------------------


def test_engine_tokens_equal_generate_for_every_task(adapter):
    engine = TorchEngine(adapter)  # one engine: from the second query on, its static cache is reused
    check_engine_equals_generate(adapter, engine, REQUESTS)


# --- prompts ---------------------------------------------------------------------------------------------


def test_prompts_are_paligemma_task_prefixes(adapter):
    assert [adapter.prompt(r) for r in REQUESTS] == [
        "<image>caption en", "<image>answer en what color is the mug?", "<image>detect red mug"]
    assert adapter.prompt(Request(Task.GROUND, "find the cup, the ball")) == "<image>detect cup ; ball"
    assert adapter.prompt(Request(Task.GROUND, " ?")) == "<image>caption en"  # nothing to detect


def test_processor_puts_image_tokens_and_bos_before_the_prefix(adapter):
    inputs = adapter.prepare(frame(0), REQUESTS[2])
    t = inputs.tensors
    assert "labels" not in t  # the processor's training labels are not passed to the model
    ids = t["input_ids"][0].tolist()
    n_image = (IMAGE_SIZE // 8) ** 2
    assert ids[:n_image] == [adapter.model.config.image_token_id] * n_image
    assert ids[n_image] == adapter.tokenizer.bos_token_id
    assert adapter.tokenizer.decode(ids[n_image + 1:]).split() == ["detect", "red", "mug"]
    assert t["token_type_ids"].sum() == 0  # the whole prompt is the bidirectional prefix


# --- geometry and parsing --------------------------------------------------------------------------------


def test_input_is_a_plain_resize_of_the_whole_frame(adapter):
    inputs = adapter.prepare(frame(0, 480, 640), REQUESTS[0])
    assert inputs.tensors["pixel_values"].shape[-2:] == (IMAGE_SIZE, IMAGE_SIZE)
    t = inputs.transform
    assert (t.scale_x, t.scale_y) == (IMAGE_SIZE / 640, IMAGE_SIZE / 480)
    assert (t.pad_x, t.pad_y, t.crop_x, t.crop_y) == (0, 0, 0, 0)


# PaliGemma's documented detect output: <locY1><locX1><locY2><locX2> label, entries joined by " ; ",
# each value k of 0..1023 meaning k / 1023 of the image side (big_vision's encoding).
GOLDEN = "<loc0256><loc0128><loc0768><loc0896> red mug ; <loc0000><loc0000><loc1023><loc1023> table"


def test_golden_detect_output_maps_to_source_pixels(adapter):
    f = frame(0, 480, 640)
    request = Request(Task.GROUND, "red mug ; table")
    inputs = adapter.prepare(f, request)
    parsed = adapter.parse(GOLDEN, inputs, f, request)
    assert parsed.text == "red mug ; table"
    (label, box), (label2, box2) = parsed.boxes
    assert label == "red mug" and label2 == "table"
    expected = (128 / 1023 * 640, 256 / 1023 * 480, 896 / 1023 * 640, 768 / 1023 * 480)  # x, y from y, x order
    assert (box.x_min, box.y_min, box.x_max, box.y_max) == pytest.approx(expected, abs=1e-6)
    assert (box2.x_min, box2.y_min, box2.x_max, box2.y_max) == pytest.approx((0, 0, 640, 480), abs=1e-6)
    assert parsed.dropped == []


def test_segmentation_output_keeps_its_box(adapter):
    f = frame(0, 120, 160)
    request = Request(Task.GROUND, "ball")
    inputs = adapter.prepare(f, request)
    segs = "".join(f"<seg{i:03d}>" for i in range(16))
    parsed = adapter.parse(f"<loc0000><loc0512><loc1023><loc1023>{segs} ball", inputs, f, request)
    [(label, box)] = parsed.boxes
    assert label == "ball" and parsed.text == "ball"
    assert (box.x_min, box.y_max) == pytest.approx((512 / 1023 * 160, 120))


def test_malformed_entries_are_dropped_with_reasons(adapter):
    f = frame(0, 120, 160)
    request = Request(Task.GROUND, "ball")
    inputs = adapter.prepare(f, request)
    text = ("<loc0100><loc0100> ball ; <loc0900><loc0100><loc0100><loc0200> cube ; "
            "<loc0000><loc0000><loc0500><loc0500> cone")
    parsed = adapter.parse(text, inputs, f, request)
    assert [label for label, _ in parsed.boxes] == ["cone"]
    assert sorted(d.split(":")[0] for d in parsed.dropped) == ["inverted", "malformed"]


def test_captions_and_answers_have_no_boxes(adapter):
    f = frame(0, 120, 160)
    inputs = adapter.prepare(f, REQUESTS[1])
    parsed = adapter.parse(" red \n", inputs, f, REQUESTS[1])
    assert parsed.text == "red" and parsed.boxes == []


def test_strip_paligemma_tokens():
    assert strip_paligemma_tokens("<loc0001><loc0002><loc0003><loc0004><seg001> cat ;  dog") == "cat ; dog"
