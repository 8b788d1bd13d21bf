"""SmolVLM / Idefics3 adapter (and SmolVLM2's classes) on tiny random checkpoints: prompts, engine == generate,
and the tiled input geometry."""

from __future__ import annotations

import numpy as np
import pytest
from model_checks import check_engine_equals_generate, frame, one_thread  # noqa: F401  (one_thread: autouse)
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

from vlm_ros.core.types import Request, Task
from vlm_ros.engine import TorchEngine
from vlm_ros.models.idefics3 import DESCRIBE_INSTRUCTION, Idefics3Adapter, idefics3_input_size
from vlm_ros.testing.tiny_idefics3 import LONGEST_EDGE, TILE, build_tiny_idefics3

REQUESTS = [Request(Task.DESCRIBE), Request(Task.ANSWER, "what color is the mug?"),
            Request(Task.GROUND, "where is the red mug?")]


@pytest.fixture(scope="module", params=["idefics3", "smolvlm"], ids=["smolvlm-idefics3", "smolvlm2"])
def adapter(request, tmp_path_factory):
    path = build_tiny_idefics3(tmp_path_factory.mktemp(f"tiny_{request.param}"), model_type=request.param)
    adapter = Idefics3Adapter.from_pretrained(path)
    assert adapter.model.config.model_type == request.param
    return adapter


# --- generation through the engine ---------------------------------------------------------------------


@pytest.mark.parametrize("form", [None, "sliced", "static"])  # None: the CPU default (numpy)
def test_engine_tokens_equal_generate_for_every_task(adapter, form):
    # one engine: later queries reuse its cache and the frame's vision features
    engine = TorchEngine(adapter, decode_form=form)
    assert check_engine_equals_generate(adapter, engine, REQUESTS) == [False, True, True] * 2


# --- prompts ---------------------------------------------------------------------------------------------


def test_prompts_use_the_smolvlm_chat_format(adapter):
    assert [adapter.prompt(r) for r in REQUESTS] == [
        f"<|im_start|>User:<image>{DESCRIBE_INSTRUCTION}<end_of_utterance>\nAssistant:",
        "<|im_start|>User:<image>what color is the mug?<end_of_utterance>\nAssistant:",
        "<|im_start|>User:<image>where is the red mug?<end_of_utterance>\nAssistant:",
    ]
    assert not adapter.can_ground


def test_image_placeholder_expands_to_tiles_plus_global_image(adapter):
    inputs = adapter.prepare(frame(0, 120, 160), REQUESTS[0])
    t = inputs.tensors
    assert set(t) == {"input_ids", "attention_mask", "pixel_values", "pixel_attention_mask"}
    # 120x160 -> longest edge 64 -> 64x48 -> sides up to multiples of 32: 64x64 = 2x2 tiles + the global image
    assert t["pixel_values"].shape == (1, 5, 3, TILE, TILE)
    tokens = adapter.tokenizer.convert_ids_to_tokens(t["input_ids"][0].tolist())
    assert [tok for tok in tokens if tok.startswith("<row_")] == ["<row_1_col_1>", "<row_1_col_2>", "<row_2_col_1>",
                                                                 "<row_2_col_2>"]
    assert tokens.count("<global-img>") == 1
    assert tokens.count("<image>") == 5 * adapter.processor.image_seq_len


def test_parse_returns_text_only(adapter):
    f = frame(0)
    inputs = adapter.prepare(f, REQUESTS[2])
    parsed = adapter.parse("  The mug is on the left.<loc_10><loc_20><loc_30><loc_40> ", inputs, f, REQUESTS[2])
    assert parsed.text == "The mug is on the left.<loc_10><loc_20><loc_30><loc_40>"
    assert parsed.boxes == [] and parsed.dropped == []


# --- geometry --------------------------------------------------------------------------------------------


def test_input_transform_is_the_resize_the_tiles_are_cut_from(adapter):
    inputs = adapter.prepare(frame(0, 120, 160), REQUESTS[0])
    t = inputs.transform
    assert (t.src_w, t.src_h) == (160, 120)
    assert (t.src_w * t.scale_x, t.src_h * t.scale_y) == pytest.approx((64, 64))


@pytest.mark.parametrize("longest_edge, tile", [(LONGEST_EDGE, TILE), (96, 32), (64, 64)])
def test_input_size_matches_the_processor_over_many_sizes(longest_edge, tile):
    ip = Idefics3ImageProcessorPil(size={"longest_edge": longest_edge}, max_image_size={"longest_edge": tile})
    for h in range(5, 300, 23):
        for w in range(5, 300, 29):
            out = ip(images=[np.zeros((h, w, 3), np.uint8)], return_row_col_info=True,
                     input_data_format="channels_last")
            rows, cols = out["rows"][0][0], out["cols"][0][0]
            tiled = (rows * tile, cols * tile) if rows else tuple(np.asarray(out["pixel_values"]).shape[-2:])
            assert idefics3_input_size(h, w, longest_edge=longest_edge, tile=tile, do_image_splitting=True) == tiled


def test_input_size_with_released_smolvlm_settings():
    # SmolVLM-256M/500M: longest edge 4 x 512, 512-px tiles. A 640x480 frame becomes 2048x1536: 4x3 tiles.
    ip = Idefics3ImageProcessorPil(size={"longest_edge": 2048}, max_image_size={"longest_edge": 512})
    assert ip.get_number_of_image_patches(480, 640) == (13, 3, 4)  # the processor's own count, no pixels processed
    assert idefics3_input_size(480, 640, longest_edge=2048, tile=512, do_image_splitting=True) == (1536, 2048)


def test_without_splitting_the_input_is_one_square_tile():
    assert idefics3_input_size(120, 160, longest_edge=64, tile=32, do_image_splitting=False) == (32, 32)
    ip = Idefics3ImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 32},
                                   do_image_splitting=False)
    assert np.asarray(ip(images=[np.zeros((120, 160, 3), np.uint8)])["pixel_values"]).shape[-3:] == (3, 32, 32)
