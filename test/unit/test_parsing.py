"""vlm_ros.models.parsing: golden model outputs, hostile outputs, fuzzing, coordinate mapping."""

from __future__ import annotations

import json
import math
import time
import unicodedata

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlm_ros.core.types import Box
from vlm_ros.models.parsing import (
    MAX_DROPPED,
    ParsedBox,
    ParseResult,
    ResizeTransform,
    clean_label,
    map_box,
    parse_loc_polygons,
    parse_loc_tokens,
    parse_paligemma,
    parse_qwen_json,
)


def boxes(result: ParseResult) -> list[tuple[str, tuple[float, float, float, float]]]:
    return [(b.label, (b.box.x_min, b.box.y_min, b.box.x_max, b.box.y_max)) for b in result.boxes]


def reasons(result: ParseResult) -> list[str]:
    return [d.split(":", 1)[0] for d in result.dropped]


def assert_valid(result: ParseResult, width: float, height: float, max_boxes: int = 100,
                 max_label_len: int = 64) -> None:
    """The contract every parser keeps, whatever the text."""
    assert isinstance(result, ParseResult)
    assert len(result.boxes) <= max_boxes
    assert len(result.dropped) <= MAX_DROPPED + 2
    for pb in result.boxes:
        assert isinstance(pb, ParsedBox) and isinstance(pb.label, str) and isinstance(pb.box, Box)
        b = pb.box
        assert all(math.isfinite(v) for v in (b.x_min, b.y_min, b.x_max, b.y_max))
        assert 0.0 <= b.x_min < b.x_max <= width and 0.0 <= b.y_min < b.y_max <= height
        assert len(pb.label) <= max_label_len and pb.label == pb.label.strip()
        assert not any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn") for c in pb.label)
    assert all(isinstance(d, str) and d for d in result.dropped)


# ------------------------------------------------------------------------------------------------
# Florence-2 <loc_N>
# Golden strings: Florence-2's generated text as decoded with skip_special_tokens=False, taken from
# transformers tests/models/florence2/test_processing_florence2.py (<OD> / description_with_bboxes and
# <CAPTION_TO_PHRASE_GROUNDING> / phrase_grounding cases).

FLORENCE_OD = "</s><s>car<loc_53><loc_334><loc_933><loc_775>door handle<loc_425><loc_504><loc_474><loc_516></s><pad>"
FLORENCE_GROUNDING = ("</s><s>red car<loc_53><loc_334><loc_933><loc_775><loc_711><loc_203><loc_906><loc_546>"
                      "sky<loc_0><loc_0><loc_999><loc_300></s>")
FLORENCE_NO_LABEL = ("</s><s><loc_53><loc_334><loc_933><loc_775><loc_711><loc_203><loc_906><loc_546>"
                     "<loc_585><loc_309><loc_774><loc_709><loc_577></s><pad>")


def test_florence_od_golden() -> None:
    r = parse_loc_tokens(FLORENCE_OD, 1000, 1000)
    assert boxes(r) == [("car", (53.5, 334.5, 933.5, 775.5)), ("door handle", (425.5, 504.5, 474.5, 516.5))]
    assert r.dropped == []


def test_florence_bin_centre_mapping_on_a_non_square_image() -> None:
    # (k + 0.5) * size / 1000. transformers' Florence2PostProcessor.dequantize gives the same values
    # truncated to int: [34, 160, 597, 372] for this box on a 640x480 image (checked by hand, not here:
    # importing transformers costs ~10 s on the CI machines).
    r = parse_loc_tokens("car<loc_53><loc_334><loc_933><loc_775>", 640, 480)
    (label, (x1, y1, x2, y2)), = boxes(r)
    assert (x1, y1, x2, y2) == pytest.approx((34.24, 160.56, 597.44, 372.24))
    assert [int(v) for v in (x1, y1, x2, y2)] == [34, 160, 597, 372]


def test_florence_phrase_grounding_several_boxes_per_label() -> None:
    r = parse_loc_tokens(FLORENCE_GROUNDING, 1000, 1000)
    assert boxes(r) == [
        ("red car", (53.5, 334.5, 933.5, 775.5)),
        ("red car", (711.5, 203.5, 906.5, 546.5)),
        ("sky", (0.5, 0.5, 999.5, 300.5)),
    ]


def test_florence_empty_labels_and_stray_token() -> None:
    r = parse_loc_tokens(FLORENCE_NO_LABEL, 1000, 1000)
    assert [b for _, b in boxes(r)] == [(53.5, 334.5, 933.5, 775.5), (711.5, 203.5, 906.5, 546.5),
                                        (585.5, 309.5, 774.5, 709.5)]
    assert all(label == "" for label, _ in boxes(r))
    assert reasons(r) == ["malformed"] and "1 stray" in r.dropped[0]


def test_loc_index_equal_to_bins_is_out_of_range() -> None:
    # Florence-2's vocabulary stops at <loc_999>; transformers' own test string uses <loc_1000>
    r = parse_loc_tokens("sky<loc_0><loc_0><loc_1000><loc_300>", 1000, 1000)
    assert r.boxes == [] and reasons(r) == ["out of range"]


def test_embedded_model_64_bins_and_yxyx() -> None:
    r = parse_loc_tokens("mug<loc_0><loc_16><loc_31><loc_63>", 128, 64, bins=64)
    assert boxes(r) == [("mug", (1.0, 16.5, 63.0, 63.5))]
    r = parse_loc_tokens("mug<loc_16><loc_0><loc_63><loc_31>", 128, 64, bins=64, order="yxyx")
    assert boxes(r) == [("mug", (1.0, 16.5, 63.0, 63.5))]
    assert reasons(parse_loc_tokens("mug<loc_0><loc_0><loc_64><loc_10>", 64, 64, bins=64)) == ["out of range"]


def test_list_separators_are_not_part_of_labels() -> None:
    r = parse_loc_tokens("red ball<loc_0><loc_0><loc_8><loc_8>, blue cube<loc_8><loc_8><loc_16><loc_16>", 64, 64,
                         bins=64)
    assert [label for label, _ in boxes(r)] == ["red ball", "blue cube"]


@pytest.mark.parametrize(
    "text,reason",
    [
        ("a<loc_500><loc_500><loc_100><loc_600>", "inverted"),
        ("a<loc_10><loc_10><loc_10><loc_20>", "degenerate"),  # zero width
        ("a<loc_-5><loc_10><loc_20><loc_20>", "malformed"),
        ("a<loc_1e3><loc_10><loc_20><loc_20>", "malformed"),
        ("a<loc_nan><loc_10><loc_20><loc_20>", "malformed"),
        ("a<loc_ 5><loc_10><loc_20><loc_20>", "malformed"),
        ("a<loc_٣><loc_10><loc_20><loc_20>", "malformed"),  # Arabic-Indic digit: isdigit() but not ASCII
        ("a<loc_" + "9" * 5000 + "><loc_10><loc_20><loc_20>", "out of range"),  # no int() of 5000 digits
        ("a<loc_99999999999999999999><loc_10><loc_20><loc_20>", "out of range"),
        ("x" * 65 + "<loc_10><loc_10><loc_20><loc_20>", "label too long"),
    ],
)
def test_loc_tokens_hostile(text: str, reason: str) -> None:
    r = parse_loc_tokens(text, 1000, 1000)
    assert r.boxes == [] and reasons(r) == [reason]


def test_loc_tokens_labels_are_sanitised() -> None:
    text = ("\u202eevil\u200b\x00 mug\x1b[31m\n<loc_10><loc_10><loc_20><loc_20>"
            "__import__('os').system('x')<loc_1><loc_1><loc_5><loc_5>")
    r = parse_loc_tokens(text, 1000, 1000)
    assert [label for label, _ in boxes(r)] == ["evil mug[31m", "__import__('os').system('x')"]  # text, never run
    assert_valid(r, 1000, 1000)


def test_loc_tokens_max_boxes_and_10000_entries() -> None:
    text = "".join(f"obj{i}<loc_{i % 900}><loc_10><loc_{i % 900 + 50}><loc_60>" for i in range(10_000))
    t0 = time.perf_counter()
    r = parse_loc_tokens(text, 1000, 1000)
    assert time.perf_counter() - t0 < 2.0
    assert len(r.boxes) == 100 and r.boxes[0].label == "obj0" and r.boxes[99].label == "obj99"
    assert r.dropped == ["too many: 9900 boxes beyond max_boxes=100"]
    assert len(parse_loc_tokens(text, 1000, 1000, max_boxes=3).boxes) == 3


def test_dropped_list_is_bounded() -> None:
    text = "a<loc_9><loc_9><loc_1><loc_1>" * 5000  # every entry inverted
    r = parse_loc_tokens(text, 1000, 1000)
    assert r.boxes == [] and len(r.dropped) == MAX_DROPPED + 1
    assert r.dropped[-1] == f"too many: {5000 - MAX_DROPPED} further dropped entries not listed"


def test_loc_tokens_no_boxes_in_plain_text() -> None:
    assert parse_loc_tokens("A red mug on a wooden table.", 640, 480) == ParseResult([], [])
    assert parse_loc_tokens("", 640, 480) == ParseResult([], [])


def test_loc_tokens_argument_errors() -> None:
    with pytest.raises(ValueError):
        parse_loc_tokens("", 0, 480)
    with pytest.raises(ValueError):
        parse_loc_tokens("", 640, math.nan)
    with pytest.raises(ValueError):
        parse_loc_tokens("", 640, 480, bins=0)
    with pytest.raises(ValueError):
        parse_loc_tokens("", 640, 480, order="xxyy")


# ------------------------------------------------------------------------------------------------
# PaliGemma <locNNNN>
# Format: Google AI "PaliGemma prompt and system instructions" ("detect {object} ; {object}\n" returns
# boxes as <loc> tokens), big_vision PaliGemma README/colab: four <locYYYY><locXXXX><locYYYY><locXXXX>
# tokens (y_min x_min y_max x_max, 0..1023), a space, the label; entries joined by " ; ". The
# segmentation entry below is the start of the example string of Google's big_vision PaliGemma demo
# (paligemma_parse.py), with its 16 <segNNN> mask tokens.

PALIGEMMA_DETECT = "<loc0256><loc0128><loc0768><loc0896> cat ; <loc0000><loc0000><loc1023><loc1023> sky"
PALIGEMMA_SEGMENT = (
    "<loc0000><loc0000><loc0930><loc1012> <seg114><seg074><seg106><seg044><seg030><seg027><seg119><seg119>"
    "<seg120><seg117><seg082><seg082><seg051><seg005><seg125><seg097> wall"
)


def test_paligemma_detect_golden() -> None:
    r = parse_paligemma(PALIGEMMA_DETECT, 1023, 2046)
    assert boxes(r) == [("cat", (128.0, 512.0, 896.0, 1536.0)), ("sky", (0.0, 0.0, 1023.0, 2046.0))]
    assert r.dropped == []


def test_paligemma_denominator() -> None:
    r = parse_paligemma("<loc0512><loc0256><loc1023><loc0768> dog", 1024, 1024, denominator=1024)
    assert boxes(r) == [("dog", (256.0, 512.0, 768.0, 1023.0))]
    r = parse_paligemma("<loc0512><loc0256><loc1023><loc0768> dog", 1024, 1024)  # big_vision: / 1023
    assert boxes(r)[0][1] == pytest.approx((256 / 1023 * 1024, 512 / 1023 * 1024, 768 / 1023 * 1024, 1024.0))


def test_paligemma_segmentation_golden() -> None:
    r = parse_paligemma(PALIGEMMA_SEGMENT, 640, 480)
    (label, box), = boxes(r)
    assert label == "wall" and box == pytest.approx((0.0, 0.0, 1012 / 1023 * 640, 930 / 1023 * 480))


def test_paligemma_special_tokens_and_trailing_separator() -> None:
    r = parse_paligemma("<loc0100><loc0100><loc0200><loc0200> cup ; <eos>", 1023, 1023)
    assert boxes(r) == [("cup", (100.0, 100.0, 200.0, 200.0))] and r.dropped == []


@pytest.mark.parametrize(
    "text,reason",
    [
        ("<loc0100><loc0100><loc0200> cup", "malformed"),  # three tokens
        ("<loc100><loc0100><loc0200><loc0200> cup", "malformed"),  # three digits
        ("<loc0100><loc0100><loc0200><loc1500> cup", "out of range"),
        ("<loc0300><loc0100><loc0200><loc0200> cup", "inverted"),
        ("<loc0100><loc0100><loc0100><loc0200> cup", "degenerate"),
        ("there is a cup <loc0100><loc0100><loc0200><loc0200> cup", "malformed"),  # prose before
        ("<loc0100><loc0100><loc0200><loc0200> cup <loc0001><loc0001><loc0002><loc0002> mug", "malformed"),
        ("<loc0100><loc0100><loc0200><loc0200><seg12> cup", "malformed"),
        ("<loc0100><loc0100><loc0200><loc0200> " + "y" * 65, "label too long"),
        ("I cannot see any cats.", "malformed"),
    ],
)
def test_paligemma_hostile(text: str, reason: str) -> None:
    r = parse_paligemma(text, 640, 480)
    assert r.boxes == [] and reasons(r) == [reason]


def test_paligemma_labels_sanitised_and_many_entries() -> None:
    text = " ; ".join(f"<loc0010><loc0010><loc0{i % 900 + 100:03d}><loc0500> \u202ecat\u2066{i}" for i in range(10_000))
    t0 = time.perf_counter()
    r = parse_paligemma(text, 640, 480)
    assert time.perf_counter() - t0 < 2.0
    assert len(r.boxes) == 100 and r.boxes[5].label == "cat5"
    assert r.dropped == ["too many: 9900 boxes beyond max_boxes=100"]


def test_paligemma_whitespace_bomb_is_fast() -> None:
    text = "<loc0100><loc0100><loc0200><loc0200>" + " " * 200_000 + "<x>"
    t0 = time.perf_counter()
    r = parse_paligemma(text, 640, 480)
    assert time.perf_counter() - t0 < 1.0 and reasons(r) == ["malformed"]


# ------------------------------------------------------------------------------------------------
# Qwen2.5-VL JSON
# Golden string: the output printed in the Qwen2.5-VL cookbook cookbooks/spatial_understanding.ipynb
# ("locate every cake and describe their features, output the bbox coordinates in JSON format"),
# first three of its twelve entries. bbox_2d holds absolute pixels of the resized model input (Qwen2.5-VL
# technical report; Alibaba Cloud Model Studio docs on object localisation).

QWEN_GOLDEN = (
    "```json\n"
    "[\n"
    '\t{"bbox_2d": [43, 571, 209, 753], "label": "cupcake with white frosting and colorful sprinkles"},\n'
    '\t{"bbox_2d": [68, 408, 214, 596], "label": "cupcake with red frosting and sprinkles"},\n'
    '\t{"bbox_2d": [259, 392, 386, 560], "label": "cupcake with pink frosting and sprinkles"}\n'
    "]\n"
    "```"
)


def test_qwen_golden() -> None:
    r = parse_qwen_json(QWEN_GOLDEN, 1008, 1008)
    assert boxes(r) == [
        ("cupcake with white frosting and colorful sprinkles", (43.0, 571.0, 209.0, 753.0)),
        ("cupcake with red frosting and sprinkles", (68.0, 408.0, 214.0, 596.0)),
        ("cupcake with pink frosting and sprinkles", (259.0, 392.0, 386.0, 560.0)),
    ]
    assert r.dropped == []


def test_qwen_without_fence_and_with_prose() -> None:
    text = 'Sure! Here are the objects [as requested]:\n[{"bbox_2d": [10, 20, 30, 40], "label": "mug"}]\nAnything else?'
    assert boxes(parse_qwen_json(text, 100, 100)) == [("mug", (10.0, 20.0, 30.0, 40.0))]
    single = '{"bbox_2d": [10, 20, 30, 40], "label": "mug"}'
    assert boxes(parse_qwen_json(single, 100, 100)) == [("mug", (10.0, 20.0, 30.0, 40.0))]


@pytest.mark.parametrize("cut", [200, 230, 260, len(QWEN_GOLDEN) - 6])
def test_qwen_truncated_recovers_complete_objects(cut: int) -> None:
    text = QWEN_GOLDEN[:cut]
    r = parse_qwen_json(text, 1008, 1008)
    complete = text.count("}")
    assert len(r.boxes) == complete
    assert boxes(r) == boxes(parse_qwen_json(QWEN_GOLDEN, 1008, 1008))[:complete]


def test_qwen_truncated_reason() -> None:
    r = parse_qwen_json('```json\n[{"bbox_2d": [1, 2, 30, 40], "label": "a"}, {"bbox_2d": [5, 6', 100, 100)
    assert len(r.boxes) == 1 and reasons(r) == ["truncated"]


@pytest.mark.parametrize(
    "entry,reason",
    [
        ('{"bbox_2d": [10, 20, NaN, 40], "label": "a"}', "non-finite"),
        ('{"bbox_2d": [10, 20, Infinity, 40], "label": "a"}', "non-finite"),
        ('{"bbox_2d": [10, 20, 1e400, 40], "label": "a"}', "non-finite"),
        ('{"bbox_2d": [10, 20, 1' + "0" * 400 + ', 40], "label": "a"}', "non-finite"),
        ('{"bbox_2d": [10, 20, 1e300, 40], "label": "a"}', "out of range"),
        ('{"bbox_2d": [-50, 20, 30, 40], "label": "a"}', "out of range"),
        ('{"bbox_2d": [30, 20, 10, 40], "label": "a"}', "inverted"),
        ('{"bbox_2d": [10, 20, 10, 40], "label": "a"}', "degenerate"),
        ('{"bbox_2d": [10, 20, 30], "label": "a"}', "malformed"),
        ('{"bbox_2d": [10, 20, 30, 40, 50], "label": "a"}', "malformed"),
        ('{"bbox_2d": ["10", 20, 30, 40], "label": "a"}', "malformed"),
        ('{"bbox_2d": [true, 20, 30, 40], "label": "a"}', "malformed"),
        ('{"bbox_2d": [[10], 20, 30, 40], "label": "a"}', "malformed"),
        ('{"bbox_2d": "10, 20, 30, 40", "label": "a"}', "malformed"),
        ('{"bbox_2d": [10, 20, 30, 40], "label": 7}', "malformed"),
        ('{"label": "a"}', "malformed"),
        ('{"point_2d": [10, 20, 30], "label": "a"}', "malformed"),
        ('{"point_2d": [NaN, 20], "label": "a"}', "non-finite"),
        ('{"point_2d": [10, 1e400], "label": "a"}', "non-finite"),
        ('{"point_2d": [-10, 20], "label": "a"}', "out of range"),
        ('{"point_2d": "10, 20", "label": "a"}', "malformed"),
        ('{"point_2d": [true, 20], "label": "a"}', "malformed"),
        ('[10, 20, 30, 40]', "malformed"),
        ('"__import__(\'os\').system(\'rm -rf /\')"', "malformed"),
        ('{"bbox_2d": [10, 20, 30, 40], "label": "' + "z" * 65 + '"}', "label too long"),
    ],
)
def test_qwen_hostile_entries(entry: str, reason: str) -> None:
    good = '{"bbox_2d": [1, 1, 5, 5], "label": "ok"}'
    r = parse_qwen_json(f"[{entry}, {good}]", 100, 100)
    assert boxes(r) == [("ok", (1.0, 1.0, 5.0, 5.0))]
    assert reasons(r) == [reason]


# Qwen2.5-VL pointing output (the cookbook's "Output the point coordinates in JSON format." prompts): absolute
# pixels of the smart-resized input, like its boxes.
QWEN_POINTS = (
    "```json\n"
    "[\n"
    '\t{"point_2d": [418, 305], "label": "free space on the white table"},\n'
    '\t{"point_2d": [99.5, 700], "label": "red mug"}\n'
    "]\n"
    "```"
)


def points(result: ParseResult) -> list[tuple[str, float, float]]:
    return [(p.label, p.x, p.y) for p in result.points]


def test_qwen_points_golden() -> None:
    r = parse_qwen_json(QWEN_POINTS, 1008, 756)
    assert r.boxes == [] and r.dropped == []
    assert points(r) == [("free space on the white table", 418.0, 305.0), ("red mug", 99.5, 700.0)]


def test_qwen_boxes_and_points_mixed_box_wins_and_limits() -> None:
    text = json.dumps([{"bbox_2d": [1, 2, 30, 40], "point_2d": [5, 5], "label": "mug"}, {"point_2d": [101, -2]},
                       {"point_2d": [50, 60], "label": "ball"}])
    r = parse_qwen_json(text, 100, 100)
    assert boxes(r) == [("mug", (1.0, 2.0, 30.0, 40.0))]
    assert points(r) == [("", 100.0, 0.0), ("ball", 50.0, 60.0)]  # a small overshoot is clipped
    flood = json.dumps([{"point_2d": [i % 100, 1]} for i in range(5000)])
    r = parse_qwen_json(flood, 100, 100, max_boxes=10)
    assert len(r.points) == 10 and r.dropped == ["too many: 4990 boxes beyond max_boxes=10"]


def test_qwen_small_overshoot_is_clipped_and_label_optional() -> None:
    r = parse_qwen_json('[{"bbox_2d": [-2, -1.5, 103, 100.5]}]', 100, 100)
    assert boxes(r) == [("", (0.0, 0.0, 100.0, 100.0))]


def test_qwen_import_string_is_only_text() -> None:
    r = parse_qwen_json('[{"bbox_2d": [1, 1, 5, 5], "label": "__import__(\'os\').system(\'id\')"}]', 10, 10)
    assert r.boxes[0].label == "__import__('os').system('id')"
    assert parse_qwen_json("__import__('os').system('id')", 10, 10).boxes == []


def test_qwen_unicode_controls_stripped() -> None:
    r = parse_qwen_json('[{"bbox_2d": [1, 1, 5, 5], "label": "\\u202egnp.exe\\u0000 \\u200bmug\\n\\tcup"}]', 10, 10)
    assert r.boxes[0].label == "gnp.exe mug cup"


def test_qwen_deeply_nested_json() -> None:
    for text in ["[" * 100_000, "[" * 50_000 + "]" * 50_000, '[{"bbox_2d": ' + "[" * 100_000 + "]" * 100_000 + "}]"]:
        r = parse_qwen_json(text, 100, 100)
        assert r.boxes == [] and r.dropped


def test_qwen_10000_entries() -> None:
    text = json.dumps([{"bbox_2d": [i % 50, 1, i % 50 + 10, 20], "label": f"o{i}"} for i in range(10_000)])
    r = parse_qwen_json(text, 100, 100)
    assert len(r.boxes) == 100 and r.dropped == ["too many: 9900 boxes beyond max_boxes=100"]


def test_qwen_garbage() -> None:
    for text in ["", "no json here", "```json\n```", "{", "[", "]", "[}", "null", "[null, 1, \"x\"]"]:
        r = parse_qwen_json(text, 100, 100)
        assert r.boxes == []
        assert_valid(r, 100, 100)


# ------------------------------------------------------------------------------------------------
# fuzzing: arbitrary text never raises and always yields valid boxes

LOC_PIECES = ["<loc_0>", "<loc_1>", "<loc_500>", "<loc_999>", "<loc_1000>", "<loc_-1>", "<loc_x>", "<loc_",
              "</s>", "<s>", "<pad>", "<od>", "car", " ", "\u202e", "\x00", "\n", ">", "<", "<loc_63>",
              "<loc_10><loc_20><loc_500><loc_600>", "<loc_600><loc_20><loc_10><loc_900>"]
PG_PIECES = ["<loc0000>", "<loc1023>", "<loc0512>", "<loc1024>", "<loc9999>", "<loc12>", "<seg001>", "<seg12>",
             " ; ", ";", " ", "cat", "<eos>", "\u2066", "<", "\t", "<loc0100><loc0100><loc0200><loc0900>",
             "<loc0100><loc0900><loc0200><loc0200>"]


def soup(pieces: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.text(max_size=200),
                     st.lists(st.one_of(st.sampled_from(pieces), st.text(max_size=4)), max_size=60).map("".join))


sizes = st.tuples(st.floats(0.5, 5000), st.floats(0.5, 5000))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(soup(LOC_PIECES), sizes, st.sampled_from([1, 64, 1000]), st.sampled_from(["xyxy", "yxyx"]), st.integers(0, 5))
def test_fuzz_loc_tokens(text: str, size, bins: int, order: str, max_boxes: int) -> None:
    w, h = size
    assert_valid(parse_loc_tokens(text, w, h, bins=bins, order=order, max_boxes=max_boxes), w, h, max_boxes=max_boxes)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(soup([*LOC_PIECES, "<sep>", "<poly>", "</poly>"]), sizes, st.integers(0, 4), st.integers(3, 8))
def test_fuzz_loc_polygons(text: str, size, max_polygons: int, max_vertices: int) -> None:
    w, h = size
    r = parse_loc_polygons(text, w, h, max_polygons=max_polygons, max_vertices=max_vertices)
    assert len(r.polygons) <= max_polygons and len(r.dropped) <= MAX_DROPPED + 2
    for p in r.polygons:
        assert 3 <= p.shape[0] <= max_vertices and p.shape[1] == 2 and np.isfinite(p).all()
        assert (p >= 0).all() and (p[:, 0] <= w).all() and (p[:, 1] <= h).all()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(soup(PG_PIECES), sizes, st.integers(1, 5))
def test_fuzz_paligemma(text: str, size, max_label_len: int) -> None:
    w, h = size
    assert_valid(parse_paligemma(text, w, h, max_label_len=max_label_len), w, h, max_label_len=max_label_len)


numbers = st.one_of(st.integers(-(10**30), 10**30), st.floats(allow_nan=True, allow_infinity=True),
                    st.integers(-10, 2000))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20,
)
entries = st.one_of(
    st.fixed_dictionaries({"bbox_2d": st.lists(numbers, min_size=3, max_size=5),
                           "label": st.one_of(st.text(max_size=80), numbers)}),
    st.fixed_dictionaries({"bbox_2d": st.lists(st.integers(-20, 1100), min_size=4, max_size=4),
                           "label": st.text(max_size=10)}),
    st.fixed_dictionaries({  # mostly plausible boxes
        "bbox_2d": st.tuples(st.integers(0, 300), st.integers(0, 300), st.integers(1, 300), st.integers(1, 300)).map(
            lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]]),
        "label": st.text(max_size=10),
    }),
    st.fixed_dictionaries({"point_2d": st.lists(numbers, max_size=2)}),
    json_values,
)


@st.composite
def qwen_texts(draw) -> str:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.text(max_size=300))
    text = json.dumps(draw(st.lists(entries, max_size=8)), ensure_ascii=draw(st.booleans()))
    if draw(st.booleans()):
        text = text[: draw(st.integers(0, len(text)))]  # truncated generation
    if draw(st.booleans()):
        text = f"```json\n{text}\n```"
    return draw(st.text(max_size=20)) + text + draw(st.text(max_size=20))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(qwen_texts(), sizes)
def test_fuzz_qwen_json(text: str, size) -> None:
    w, h = size
    r = parse_qwen_json(text, w, h)
    assert_valid(r, w, h)
    assert len(r.boxes) + len(r.points) <= 100
    assert all(math.isfinite(p.x) and math.isfinite(p.y) and 0 <= p.x <= w and 0 <= p.y <= h for p in r.points)


# ------------------------------------------------------------------------------------------------
# Florence-2 polygons (<REFERRING_EXPRESSION_SEGMENTATION>): loc pairs, <sep> between the polygons of one object,
# optionally wrapped in <poly>...</poly> (the format transformers' Florence-2 post-processor parses).

FLORENCE_POLYGON = "</s><s>red mug<loc_100><loc_200><loc_300><loc_200><loc_300><loc_400><loc_100><loc_400></s>"
FLORENCE_POLYGONS = ("<poly><loc_0><loc_0><loc_10><loc_0><loc_10><loc_10><sep>"
                     "<loc_500><loc_500><loc_600><loc_500><loc_550><loc_600></poly>")


def test_florence_polygon_golden() -> None:
    r = parse_loc_polygons(FLORENCE_POLYGON, 640, 480)
    assert r.dropped == [] and len(r.polygons) == 1
    expected = [((k + 0.5) * 640 / 1000, (m + 0.5) * 480 / 1000) for k, m in [(100, 200), (300, 200), (300, 400),
                                                                              (100, 400)]]
    np.testing.assert_allclose(r.polygons[0], expected)
    two = parse_loc_polygons(FLORENCE_POLYGONS, 1000, 1000)
    assert [p.shape for p in two.polygons] == [(3, 2), (3, 2)] and two.dropped == []


@pytest.mark.parametrize("text, reason", [
    ("<loc_1><loc_2><loc_3><loc_4>", "degenerate"),  # two vertices
    ("<loc_1><loc_2><loc_3><loc_4><loc_5><loc_6><loc_7>", "malformed"),  # odd: last token ignored, still kept
    ("<loc_1><loc_2><loc_3><loc_4><loc_5><loc_1000>", "out of range"),
    ("<loc_1><loc_2><loc_3><loc_x><loc_5><loc_6>", "malformed"),
    ("<loc_1><loc_2><loc_3><loc_99999999999999999999><loc_5><loc_6>", "out of range"),
    ("".join(f"<loc_{i % 1000}>" for i in range(2000)), "too many"),  # 1000 vertices > 512
])
def test_florence_polygon_hostile(text: str, reason: str) -> None:
    r = parse_loc_polygons(text + "<sep><loc_10><loc_10><loc_20><loc_10><loc_20><loc_20>", 100, 100)
    assert reasons(r)[0] == reason
    for p in r.polygons:
        assert p.shape[1] == 2 and p.shape[0] >= 3 and np.isfinite(p).all()
        assert (p >= 0).all() and (p[:, 0] <= 100).all() and (p[:, 1] <= 100).all()


def test_florence_polygon_limits_and_plain_text() -> None:
    many = "<sep>".join("<loc_1><loc_1><loc_9><loc_1><loc_9><loc_9>" for _ in range(40))
    r = parse_loc_polygons(many, 100, 100)
    assert len(r.polygons) == 16 and r.dropped == ["too many: 24 polygons beyond max_polygons=16"]
    assert parse_loc_polygons("a mug on a table", 100, 100).polygons == []
    with pytest.raises(ValueError):
        parse_loc_polygons("", 0, 100)


# ------------------------------------------------------------------------------------------------
# labels


def test_clean_label() -> None:
    assert clean_label("  a\tb\r\nc  ") == "a b c"
    assert clean_label("\u202ered\u202c mug\u200d") == "red mug"
    assert clean_label("tasse à café ☕ 杯子") == "tasse à café ☕ 杯子"
    assert clean_label("\ud800x\ue000y") == "xy"  # lone surrogate, private use


# ------------------------------------------------------------------------------------------------
# map_box: model input -> source pixels


def test_map_box_plain_resize() -> None:
    t = ResizeTransform.resize(1280, 720, 448, 448)
    assert map_box(Box(0, 0, 448, 448), t) == Box(0, 0, 1280, 720)
    assert map_box(Box(112, 224, 224, 336), t) == Box(320, 360, 640, 540)


def test_map_box_letterbox() -> None:
    # 1280x720 into 640x640: scaled to 640x360, 140 px padding above and below
    t = ResizeTransform.letterbox(1280, 720, 640, 640)
    assert (t.scale_x, t.scale_y, t.pad_x, t.pad_y) == (0.5, 0.5, 0, 140)
    assert map_box(Box(0, 140, 640, 500), t) == Box(0, 0, 1280, 720)
    assert map_box(Box(100, 190, 200, 240), t) == Box(200, 100, 400, 200)
    # a box reaching into the padding is clipped to the image; one entirely in the padding has no area
    assert map_box(Box(0, 0, 640, 640), t) == Box(0, 0, 1280, 720)
    assert map_box(Box(10, 0, 50, 100), t).area == 0.0


def test_map_box_centre_crop() -> None:
    # 640x480 -> short side to 224 (scale 0.35, 298.67 -> 299x224) -> centre crop 224x224
    t = ResizeTransform.center_crop(640, 480, 224, 224)
    assert t.scale_y == pytest.approx(224 / 480) and t.scale_x == pytest.approx(299 / 640)
    assert t.crop_x == pytest.approx(37 / (299 / 640)) and t.crop_y == 0.0
    full = map_box(Box(0, 0, 224, 224), t)
    assert full.y_min == 0.0 and full.y_max == pytest.approx(480.0)
    assert full.x_min == pytest.approx(79.197, abs=1e-3) and full.width == pytest.approx(224 * 640 / 299)
    # the input's centre maps to the source's centre (to the half-pixel the rounding allows)
    cx, cy = map_box(Box(111, 111, 113, 113), t).center
    assert cx == pytest.approx(320, abs=1.1) and cy == pytest.approx(240, abs=1e-9)


def test_map_box_round_trip_with_explicit_transform() -> None:
    t = ResizeTransform(src_w=1000, src_h=800, scale_x=0.4, scale_y=0.5, pad_x=12, pad_y=3, crop_x=100, crop_y=50)
    src = Box(300, 200, 700, 600)
    inp = Box(*(((src.x_min - 100) * 0.4 + 12), ((src.y_min - 50) * 0.5 + 3),
                ((src.x_max - 100) * 0.4 + 12), ((src.y_max - 50) * 0.5 + 3)))
    got = map_box(inp, t)
    assert (got.x_min, got.y_min, got.x_max, got.y_max) == pytest.approx((300, 200, 700, 600))


@pytest.mark.parametrize("bad", [dict(scale_x=0.0), dict(scale_y=-1.0), dict(src_w=0), dict(pad_x=math.nan),
                                 dict(crop_y=math.inf)])
def test_resize_transform_validation(bad: dict) -> None:
    args = dict(src_w=10, src_h=10, scale_x=1.0, scale_y=1.0)
    args.update(bad)
    with pytest.raises(ValueError):
        ResizeTransform(**args)
