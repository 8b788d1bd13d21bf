"""Qwen3-VL adapter on a tiny random checkpoint: prompts, engine == generate, 0-1000 relative box mapping."""

from __future__ import annotations

import pytest
from model_checks import check_engine_equals_generate, frame, one_thread  # noqa: F401  (one_thread: autouse)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from vlm_ros.core.types import Request, Task
from vlm_ros.engine import TorchEngine
from vlm_ros.models.qwen2_5_vl import DESCRIBE_INSTRUCTION
from vlm_ros.models.qwen3_vl import Qwen3VLAdapter
from vlm_ros.models.registry import load_adapter
from vlm_ros.testing.tiny_qwen3_vl import build_tiny_qwen3_vl

REQUESTS = [Request(Task.DESCRIBE), Request(Task.ANSWER, "what color is the mug?"),
            Request(Task.GROUND, "where is the red mug?")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # seed 2: the random model answers every request with more than a few tokens before an end token
    return build_tiny_qwen3_vl(tmp_path_factory.mktemp("tiny_qwen3_vl"), seed=2)


@pytest.fixture(scope="module")
def adapter(model_dir):
    return load_adapter(model_dir)  # family from config.json: model_type qwen3_vl


def test_the_registry_picks_the_qwen3_vl_adapter(adapter):
    assert isinstance(adapter, Qwen3VLAdapter) and adapter.family == "qwen3_vl"


# --- generation through the engine ---------------------------------------------------------------------


def test_engine_tokens_equal_generate_for_every_task(adapter):
    # one engine: later queries reuse its cache and the frame's vision features (with their DeepStack features)
    engine = TorchEngine(adapter)
    assert check_engine_equals_generate(adapter, engine, REQUESTS) == [False, True, True] * 2


def test_prefill_needs_the_token_types(adapter):
    inputs = adapter.prepare(frame(0), REQUESTS[0])
    del inputs.tensors["mm_token_type_ids"]
    with pytest.raises(ValueError, match="mm_token_type_ids"):
        adapter.forward_inputs(inputs)


# --- prompts ---------------------------------------------------------------------------------------------


def test_prompts_are_the_checkpoints_chat_format_without_a_system_turn(adapter):
    describe, answer, ground = (adapter.prompt(r) for r in REQUESTS)
    for p in (describe, answer, ground):
        assert p.startswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>")
        assert p.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert DESCRIBE_INSTRUCTION + "<|im_end|>" in describe
    assert "what color is the mug?<|im_end|>" in answer
    assert "Locate every red mug in the image" in ground and "JSON" in ground


@pytest.mark.parametrize("h, w", [(480, 640), (120, 160), (333, 97)])
def test_one_placeholder_becomes_the_merged_patch_tokens_of_the_smart_resized_frame(adapter, h, w):
    inputs = adapter.prepare(frame(0, h, w), REQUESTS[0])
    t = inputs.tensors
    ip = adapter.processor.image_processor
    in_h, in_w = smart_resize(h, w, factor=32, min_pixels=ip.size["shortest_edge"], max_pixels=ip.size["longest_edge"])
    assert adapter.input_size(t) == (in_w, in_h)
    n_image = int((t["input_ids"] == adapter.model.config.image_token_id).sum())
    assert n_image == (in_h // 32) * (in_w // 32)  # 16-px patches, 2x2 merge
    assert int(t["mm_token_type_ids"].sum()) == n_image


# --- parsing: relative coordinates ----------------------------------------------------------------------

# Qwen3-VL's documented grounding format: JSON `bbox_2d` in 0..1000 over each axis of the whole image.
GOLDEN = '```json\n[\n\t{"bbox_2d": [250, 250, 750, 750], "label": "red mug"},\n' \
         '\t{"bbox_2d": [0, 0, 1000, 1000], "label": "table"}\n]\n```'


@pytest.mark.parametrize("h, w", [(480, 640), (120, 160), (333, 97)])
def test_relative_boxes_map_to_source_pixels_whatever_the_resize(adapter, h, w):
    f = frame(0, h, w)
    request = Request(Task.GROUND, "red mug")
    inputs = adapter.prepare(f, request)
    parsed = adapter.parse(GOLDEN, inputs, f, request)
    (label, box), (label2, box2) = parsed.boxes
    assert (label, label2) == ("red mug", "table") and parsed.dropped == []
    assert (box.x_min, box.y_min, box.x_max, box.y_max) == pytest.approx((w / 4, h / 4, 3 * w / 4, 3 * h / 4))
    assert (box2.x_min, box2.y_min, box2.x_max, box2.y_max) == pytest.approx((0, 0, w, h))


def test_untrusted_output_is_dropped_with_reasons_not_raised(adapter):
    f = frame(0, 120, 160)
    request = Request(Task.GROUND, "ball")
    inputs = adapter.prepare(f, request)
    text = '[{"bbox_2d": [0, 0, 1900, 10], "label": "x"}, {"bbox_2d": [100, 100, 400, 400], "label": "ball"}, ' \
           '{"bbox_2d": [1, 2'
    parsed = adapter.parse(text, inputs, f, request)
    assert [label for label, _ in parsed.boxes] == ["ball"]
    assert sorted(d.split(":")[0] for d in parsed.dropped) == ["out of range", "truncated"]


def test_plain_answers_have_no_boxes(adapter):
    f = frame(0, 120, 160)
    request = Request(Task.ANSWER, "what color is the mug?")
    inputs = adapter.prepare(f, request)
    parsed = adapter.parse("  It is red.\n", inputs, f, request)
    assert parsed.text == "It is red." and parsed.boxes == []


def test_onnx_export_is_refused_with_the_reason(adapter):
    from vlm_ros.export.onnx_export import UnsupportedModelError, check_exportable

    with pytest.raises(UnsupportedModelError, match="qwen3_vl.*DeepStack.*use backend torch"):
        check_exportable(adapter)
