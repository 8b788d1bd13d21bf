"""Florence-2 adapter: task prompts, the engine's generate() path, `<loc_N>` parsing and box mapping."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlm_ros.core.types import Box, Frame, Request, Task
from vlm_ros.engine.torch_engine import StopReason, TorchEngine
from vlm_ros.models.florence2 import Florence2Adapter, image_processor_transform, polygons_to_boxes
from vlm_ros.models.parsing import map_box
from vlm_ros.testing.tiny_florence2 import build_tiny_florence2

W, H = 160, 120  # non-square source


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Florence2Adapter:
    return Florence2Adapter.from_pretrained(build_tiny_florence2(tmp_path_factory.mktemp("florence2")))


@pytest.fixture(scope="module")
def engine(adapter) -> TorchEngine:
    return TorchEngine(adapter)


@pytest.fixture(scope="module")
def frame() -> Frame:
    return Frame(np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8), stamp_ns=1, camera="cam")


def box_tuple(box: Box) -> tuple[float, float, float, float]:
    return box.x_min, box.y_min, box.x_max, box.y_max


REQUESTS = [
    (Request(Task.DESCRIBE), "<CAPTION>", "what does the image describe ?"),
    (Request(Task.ANSWER, "what is on the table?"), "<MORE_DETAILED_CAPTION>", "describe with a paragraph"),
    (Request(Task.GROUND, "where is the red mug?"), "<OPEN_VOCABULARY_DETECTION>red mug",
     "locate red mug in the image"),
    (Request(Task.GROUND, "find the mug and the blue ball"), "<CAPTION_TO_PHRASE_GROUNDING>mug, blue ball",
     "locate the phrases in the caption : mug , blue ball"),
    (Request(Task.GROUND, ""), "<OD>", "locate the objects with category name in the image"),
]


# --- prompts ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("request_, prompt, expanded", REQUESTS)
def test_prompt_is_the_florence_task_token_and_the_processor_expands_it(adapter, frame, request_, prompt, expanded):
    assert adapter.prompt(request_) == prompt
    inputs = adapter.prepare(frame, request_)
    text = adapter.tokenizer.decode(inputs.tensors["input_ids"][0], skip_special_tokens=True)
    assert expanded in " ".join(text.split())
    # the image placeholders the processor inserted match the vision features Florence-2 computes
    n_image = int((inputs.tensors["input_ids"][0] == adapter.model.config.image_token_id).sum())
    assert n_image == adapter.processor.image_processor.image_seq_length == 17


def test_instruction_cannot_inject_a_task_token(adapter):
    assert adapter.prompt(Request(Task.GROUND, "<OCR> the <OD> mug")) == "<OPEN_VOCABULARY_DETECTION>ocr the od mug"


# --- generation through the engine ------------------------------------------------------------------------
@pytest.mark.parametrize("request_", [REQUESTS[i][0] for i in (0, 2, 3)], ids=[REQUESTS[i][1] for i in (0, 2, 3)])
def test_engine_tokens_equal_generate(adapter, engine, frame, request_):
    # random Florence-2 weights emit EOS at once: force n tokens on both paths (the engine's ignore_eos is
    # generate()'s min_new_tokens)
    n = 6
    inputs = adapter.prepare(frame, request_)
    result = engine.generate(inputs, n, ignore_eos=True)
    ref = adapter.model.generate(**inputs.tensors, do_sample=False, max_new_tokens=n, min_new_tokens=n)[0].tolist()
    start = adapter.model.generation_config.decoder_start_token_id
    assert ref[0] == start  # encoder-decoder: generate() returns the decoder's ids, starting with its start id
    expected = [i for i in ref[1:] if i not in adapter.eos_token_ids]
    assert result.token_ids == expected and len(expected) == n
    assert result.stop_reason == StopReason.LENGTH
    assert result.text == adapter.decode_text(expected)


def test_engine_reports_eos_like_generate(adapter, engine, frame):
    inputs = adapter.prepare(frame, Request(Task.DESCRIBE))
    result = engine.generate(inputs, 8)
    ref = adapter.model.generate(**inputs.tensors, do_sample=False, max_new_tokens=8)[0].tolist()
    expected = [i for i in ref[1:] if i not in adapter.eos_token_ids]
    assert result.token_ids == expected
    assert result.stop_reason == (StopReason.EOS if len(expected) < 8 else StopReason.LENGTH)


def test_streaming_callback_sees_growing_text(adapter, engine, frame):
    seen = []
    result = engine.generate(adapter.prepare(frame, Request(Task.GROUND, "the red mug")), 4, ignore_eos=True,
                             on_text=lambda text, n: seen.append(n))
    assert seen == [1, 2, 3, 4] and len(result.token_ids) == 4


# --- parsing: golden strings in Florence-2's documented output format ---------------------------------------
def parse(adapter, frame, text, request):
    return adapter.parse(text, adapter.prepare(frame, request), frame, request)


def test_open_vocabulary_detection_maps_bins_to_source_pixels(adapter, frame):
    request = Request(Task.GROUND, "red mug")
    out = parse(adapter, frame, "red mug<loc_100><loc_200><loc_600><loc_800>", request)
    # bin k covers [k, k+1) / 1000 of the input, which is a plain resize of the whole 160x120 source
    assert [label for label, _ in out.boxes] == ["red mug"]
    assert box_tuple(out.boxes[0][1]) == pytest.approx((100.5 * 0.16, 200.5 * 0.12, 600.5 * 0.16, 800.5 * 0.12))
    assert out.text == "red mug" and out.dropped == []
    # Florence-2's own post-processor agrees (it truncates to whole pixels)
    ref = adapter.processor.post_process_generation(
        text="red mug<loc_100><loc_200><loc_600><loc_800>", task="<OPEN_VOCABULARY_DETECTION>", image_size=(W, H))
    ref_box = ref["<OPEN_VOCABULARY_DETECTION>"]["bboxes"][0]
    assert box_tuple(out.boxes[0][1]) == pytest.approx(ref_box, abs=1.0)


def test_phrase_grounding_and_od_with_several_boxes_per_label(adapter, frame):
    text = "A green car<loc_52><loc_333><loc_932><loc_774>a yellow building<loc_0><loc_0><loc_999><loc_500>"
    out = parse(adapter, frame, text, Request(Task.GROUND, "the green car and the yellow building"))
    assert [label for label, _ in out.boxes] == ["A green car", "a yellow building"]
    assert box_tuple(out.boxes[1][1]) == pytest.approx((0.5 * 0.16, 0.5 * 0.12, 999.5 * 0.16, 500.5 * 0.12))
    od = parse(adapter, frame, "<od>car<loc_10><loc_20><loc_30><loc_40><loc_500><loc_500><loc_900><loc_990></od>",
               Request(Task.GROUND, ""))
    assert [label for label, _ in od.boxes] == ["car", "car"]
    assert box_tuple(od.boxes[1][1]) == pytest.approx((500.5 * 0.16, 500.5 * 0.12, 900.5 * 0.16, 990.5 * 0.12))


def test_polygon_output_becomes_its_bounding_box(adapter, frame):
    text = "red mug<poly><loc_100><loc_200><loc_600><loc_250><loc_350><loc_800></poly>"
    out = parse(adapter, frame, text, Request(Task.GROUND, "red mug"))
    assert [label for label, _ in out.boxes] == ["red mug"]
    assert box_tuple(out.boxes[0][1]) == pytest.approx((100.5 * 0.16, 200.5 * 0.12, 600.5 * 0.16, 800.5 * 0.12))
    assert polygons_to_boxes("x<poly><loc_1><loc_a><loc_2><loc_3></poly>") == "x"  # non-numeric: removed


@pytest.mark.parametrize("text, reason", [
    ("mug<loc_1200><loc_1><loc_2><loc_3>", "out of range"),
    ("mug<loc_5><loc_6>", "malformed"),
    ("mug<loc_500><loc_500><loc_100><loc_900>", "inverted"),
    ("mug<loc_5><loc_5><loc_5><loc_5>", "degenerate"),
])
def test_malformed_grounding_output_is_dropped_not_raised(adapter, frame, text, reason):
    out = parse(adapter, frame, text, Request(Task.GROUND, "mug"))
    assert out.boxes == [] and out.dropped and out.dropped[0].startswith(reason)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.sampled_from(["red", " mug", "<loc_0>", "<loc_999>", "<loc_1000>", "<loc_x>", "<loc_",
                                        "<poly>", "</poly>", "<sep>", "<od>", "</s>", "\u202e", "<loc_500>"]),
                       max_size=40))
def test_parse_never_raises_and_boxes_stay_in_the_frame(adapter, frame, pieces):
    request = Request(Task.GROUND, "red mug")
    out = adapter.parse("".join(pieces), GROUND_INPUTS.setdefault("x", adapter.prepare(frame, request)), frame, request)
    for _, box in out.boxes:
        assert 0 <= box.x_min < box.x_max <= W and 0 <= box.y_min < box.y_max <= H
    assert not re.search(r"<loc_[^<>]*>|<poly>|<sep>", out.text)  # complete markup never reaches the answer


GROUND_INPUTS: dict = {}


def test_caption_text_drops_markup(adapter, frame):
    out = parse(adapter, frame, "<s>A red mug on a table.<loc_3></s>", Request(Task.DESCRIBE))
    assert out.text == "A red mug on a table." and out.boxes == []


def test_decode_text_keeps_loc_tokens_contiguous(adapter):
    tokens = ["<s>", "red", "mug", "<loc_1>", "<loc_2>", "<loc_3>", "<loc_4>", "</s>"]
    ids = adapter.tokenizer.convert_tokens_to_ids(tokens)
    assert adapter.decode_text(ids) == "red mug<loc_1><loc_2><loc_3><loc_4>"


# --- the input transform, checked against the processor's actual pixels -------------------------------------
def marker_image() -> tuple[np.ndarray, tuple[int, int, int, int]]:
    img = np.zeros((H, W, 3), np.uint8)
    x1, y1, x2, y2 = 70, 30, 130, 90  # a white block (source pixels, edges)
    img[y1:y2, x1:x2] = 255
    return img, (x1, y1, x2, y2)


PROCESSOR_CONFIGS = {
    "florence2-released": dict(size={"height": 768, "width": 768}, do_center_crop=False),
    "shortest-edge-crop": dict(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                               do_center_crop=True),
    "crop-larger-than-image": dict(size={"shortest_edge": 100}, crop_size={"height": 120, "width": 120},
                                   do_center_crop=True),
}


@pytest.mark.parametrize("name", list(PROCESSOR_CONFIGS))
def test_image_processor_transform_matches_the_processed_pixels(name):
    from transformers import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil(**PROCESSOR_CONFIGS[name])
    img, source_box = marker_image()
    pixels = processor(images=[img], return_tensors="np")["pixel_values"][0]  # (3, h, w), normalised
    black = (0.0 - processor.image_mean[0]) / processor.image_std[0]
    white = (1.0 - processor.image_mean[0]) / processor.image_std[0]
    ys, xs = np.nonzero(pixels[0] > (black + white) / 2)  # the marker in input pixels
    found = Box(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    transform = image_processor_transform(processor, W, H, pixels.shape[-2:])
    mapped = map_box(found, transform)
    tolerance = 1.0 / min(transform.scale_x, transform.scale_y) + 0.5  # one input pixel, in source pixels
    assert box_tuple(mapped) == pytest.approx(source_box, abs=tolerance)


def test_image_processor_transform_refuses_a_size_it_cannot_explain():
    from transformers import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil(size={"height": 768, "width": 768}, do_center_crop=False)
    with pytest.raises(ValueError, match="cannot map boxes"):
        image_processor_transform(processor, W, H, (512, 512))
