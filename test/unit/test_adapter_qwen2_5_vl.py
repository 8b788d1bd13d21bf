"""Qwen2.5-VL adapter on a tiny random checkpoint: prompts, engine == generate, smart-resize box mapping."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from model_checks import check_engine_equals_generate, frame, one_thread  # noqa: F401  (one_thread: autouse)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from vlm_ros.core.types import Request, Task
from vlm_ros.engine import TorchEngine
from vlm_ros.models.qwen2_5_vl import DESCRIBE_INSTRUCTION, Qwen25VLAdapter, grounding_instruction
from vlm_ros.testing.tiny_qwen2_5_vl import build_tiny_qwen2_5_vl

REQUESTS = [Request(Task.DESCRIBE), Request(Task.ANSWER, "what color is the mug?"),
            Request(Task.GROUND, "where is the red mug?")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_qwen2_5_vl"))


@pytest.fixture(scope="module")
def adapter(model_dir):
    return Qwen25VLAdapter.from_pretrained(model_dir)


# --- generation through the engine ---------------------------------------------------------------------


@pytest.mark.parametrize("form", [None, "sliced", "static"])  # None: the CPU default (numpy)
def test_engine_tokens_equal_generate_for_every_task(adapter, form):
    # one engine: later queries reuse its cache and the frame's vision features
    engine = TorchEngine(adapter, decode_form=form)
    assert check_engine_equals_generate(adapter, engine, REQUESTS) == [False, True, True] * 2


def test_prefill_needs_the_token_types(adapter):
    inputs = adapter.prepare(frame(0), REQUESTS[0])
    del inputs.tensors["mm_token_type_ids"]
    with pytest.raises(ValueError, match="mm_token_type_ids"):
        adapter.forward_inputs(inputs)


# --- prompts ---------------------------------------------------------------------------------------------


def test_prompts_use_the_chat_format_and_a_json_grounding_instruction(adapter):
    describe, answer, ground = (adapter.prompt(r) for r in REQUESTS)
    for p in (describe, answer, ground):
        assert p.startswith("<|im_start|>system\n")
        assert "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>" in p
        assert p.endswith("<|im_start|>assistant\n")
    assert DESCRIBE_INSTRUCTION + "<|im_end|>" in describe
    assert "what color is the mug?<|im_end|>" in answer
    assert "Locate every red mug in the image" in ground and "JSON" in ground and "bbox" in ground


def test_grounding_instruction_for_several_objects_or_none(adapter):
    text = grounding_instruction("find the cup, the ball; a cone")
    assert 'following categories: "cup, ball, cone"' in text and "JSON" in text
    with pytest.raises(ValueError):
        grounding_instruction("?")
    assert DESCRIBE_INSTRUCTION in adapter.prompt(Request(Task.GROUND, "?"))


def test_processor_expands_one_placeholder_into_the_merged_patch_tokens(adapter):
    inputs = adapter.prepare(frame(0), REQUESTS[0])
    t = inputs.tensors
    _, gh, gw = t["image_grid_thw"][0].tolist()
    n_image = int((t["input_ids"] == adapter.model.config.image_token_id).sum())
    assert n_image == gh * gw // 4  # 2x2 merge
    assert int(t["mm_token_type_ids"].sum()) == n_image
    assert t["pixel_values"].shape[0] == gh * gw


# --- geometry and parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize("h, w", [(120, 160), (480, 640), (60, 400), (333, 97)])
def test_input_size_is_the_smart_resize_of_the_frame(adapter, h, w):
    inputs = adapter.prepare(frame(0, h, w), REQUESTS[0])
    in_w, in_h = adapter.input_size(inputs.tensors)
    ip = adapter.processor.image_processor
    assert (in_h, in_w) == smart_resize(h, w, factor=28, min_pixels=ip.size["shortest_edge"],
                                        max_pixels=ip.size["longest_edge"])
    assert in_w % 28 == 0 and in_h % 28 == 0
    t = inputs.transform
    assert (t.src_w, t.src_h) == (w, h)
    assert t.src_w * t.scale_x == pytest.approx(in_w) and t.src_h * t.scale_y == pytest.approx(in_h)


# A grounding answer in Qwen2.5-VL's documented format: a fenced JSON list of {"bbox_2d", "label"}, absolute
# pixels of the resized input. 640x480 is resized to 644x476 (multiples of 28): source (160, 120, 480, 360)
# is input (161, 119, 483, 357).
GOLDEN_640x480 = '```json\n[\n\t{"bbox_2d": [161, 119, 483, 357], "label": "red mug"},\n' \
                 '\t{"bbox_2d": [0, 0, 644, 476], "label": "table"}\n]\n```'


def test_golden_grounding_output_maps_to_source_pixels(adapter):
    f = frame(0, 480, 640)
    request = Request(Task.GROUND, "red mug")
    inputs = adapter.prepare(f, request)
    assert adapter.input_size(inputs.tensors) == (644, 476)
    parsed = adapter.parse(GOLDEN_640x480, inputs, f, request)
    (label, box), (label2, box2) = parsed.boxes
    assert label == "red mug" and label2 == "table"
    assert (box.x_min, box.y_min, box.x_max, box.y_max) == pytest.approx((160, 120, 480, 360))
    assert (box2.x_min, box2.y_min, box2.x_max, box2.y_max) == pytest.approx((0, 0, 640, 480))
    assert parsed.dropped == []


def test_non_uniform_resize_maps_each_axis_by_its_own_scale(adapter):
    f = frame(0, 120, 160)  # -> 168x112: x scaled by 1.05, y by 0.9333
    request = Request(Task.GROUND, "ball")
    inputs = adapter.prepare(f, request)
    assert adapter.input_size(inputs.tensors) == (168, 112)
    parsed = adapter.parse('[{"bbox_2d": [21, 14, 84, 56], "label": "ball"}]', inputs, f, request)
    [(_, box)] = parsed.boxes
    assert (box.x_min, box.y_min, box.x_max, box.y_max) == pytest.approx((20, 15, 80, 60))


def test_untrusted_output_is_dropped_with_reasons_not_raised(adapter):
    f = frame(0, 120, 160)
    request = Request(Task.GROUND, "ball")
    inputs = adapter.prepare(f, request)
    text = '```json\n[{"point_2d": [50, NaN], "label": "ball"}, {"bbox_2d": [0, 0, 9000, 10], "label": "x"}, ' \
           '{"bbox_2d": [10, 10, 40, 40], "label": "ball"}, {"bbox_2d": [1, 2'
    parsed = adapter.parse(text, inputs, f, request)
    assert [label for label, _ in parsed.boxes] == ["ball"] and parsed.points == []
    assert sorted(d.split(":")[0] for d in parsed.dropped) == ["non-finite", "out of range", "truncated"]


def test_pointing_instruction_gets_the_pointing_prompt_and_points_map_to_source_pixels(adapter):
    f = frame(0, 120, 160)  # -> 168x112: x scaled by 1.05, y by 0.9333
    request = Request(Task.GROUND, "point to the red mug")
    assert "Locate every red mug in the image, output the point coordinates in JSON format." in adapter.prompt(request)
    assert "bbox" in adapter.prompt(Request(Task.GROUND, "where is the red mug?"))
    inputs = adapter.prepare(f, request)
    parsed = adapter.parse('[{"point_2d": [21, 14], "label": "red mug"}, {"point_2d": [168, 112]}]', inputs, f,
                           request)
    assert parsed.boxes == [] and parsed.dropped == []
    [(label, (x, y)), (_, corner)] = parsed.points
    assert label == "red mug" and (x, y) == pytest.approx((20, 15))
    assert corner == pytest.approx((160, 120))


def test_plain_answers_have_no_boxes_and_answers_with_json_keep_theirs(adapter):
    f = frame(0, 120, 160)
    request = Request(Task.ANSWER, "what color is the mug?")
    inputs = adapter.prepare(f, request)
    assert adapter.parse("  It is red.\n", inputs, f, request).text == "It is red."
    assert adapter.parse("It is red.", inputs, f, request).boxes == []
    assert len(adapter.parse('[{"bbox_2d": [21, 14, 84, 56], "label": "mug"}]', inputs, f, request).boxes) == 1


# --- loading --------------------------------------------------------------------------------------------


def test_loads_the_released_checkpoint_layout(model_dir, adapter, tmp_path):
    """Released Qwen2.5-VL directories hold preprocessor_config.json and chat_template.json (no processor_config)."""
    released = tmp_path / "released"
    shutil.copytree(model_dir, released)
    processor_config = json.loads((released / "processor_config.json").read_text())
    (released / "processor_config.json").unlink()
    image_config = dict(processor_config["image_processor"], processor_class="Qwen2_5_VLProcessor")
    size = image_config.pop("size")
    image_config.update(min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])
    (released / "preprocessor_config.json").write_text(json.dumps(image_config))
    template = (released / "chat_template.jinja").read_text()
    (released / "chat_template.jinja").unlink()
    (released / "chat_template.json").write_text(json.dumps({"chat_template": template}))

    other = Qwen25VLAdapter.from_pretrained(released)
    f = frame(2, 90, 200)
    for request in REQUESTS:
        assert other.prompt(request) == adapter.prompt(request)
        a, b = other.prepare(f, request), adapter.prepare(f, request)
        assert a.tensors.keys() == b.tensors.keys()
        assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
        assert a.transform == b.transform
