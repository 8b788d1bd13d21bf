"""The embedded model: tokenizer, prompt, processor, save/load, and the shipped weights' accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlm_ros.embedded.build import build_model, build_tokenizer, preprocess_images, save
from vlm_ros.embedded.model import DEFAULT_WEIGHTS_DIR, EmbeddedConfig, load
from vlm_ros.embedded.prompt import LOC_BINS, build_prompt
from vlm_ros.embedded.scenes import render_scene

TINY = EmbeddedConfig(
    image_size=64, patch_size=16, vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=32, text_layers=1,
    text_heads=2,
)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.mark.parametrize(
    "text",
    [
        "red ball<loc_3><loc_4><loc_9><loc_12>, blue cube<loc_0><loc_1><loc_2><loc_63>",
        "a large red ball, a small blue cube and a large green cone",
        "is there a yellow cone?",
        "none",
        "3",
    ],
)
def test_tokenizer_round_trip(tok, text):
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text


def test_loc_tokens_are_single_tokens(tok):
    for n in (0, 17, LOC_BINS - 1):
        ids = tok(f"<loc_{n}>", add_special_tokens=False).input_ids
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids) == [f"<loc_{n}>"]
    ids = tok("cube<loc_1><loc_2>", add_special_tokens=False).input_ids
    assert tok.convert_ids_to_tokens(ids) == ["▁cube", "<loc_1>", "<loc_2>"]


def test_lower_casing_and_unknown_words(tok):
    assert tok("Where IS the Ball?", add_special_tokens=False).input_ids == tok(
        "where is the ball?", add_special_tokens=False
    ).input_ids
    assert tok.unk_token_id in tok("where is the giraffe?", add_special_tokens=False).input_ids


def test_prompt_equals_chat_template():
    _, processor = build_model(TINY)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "where is the red ball?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == build_prompt("where is the red ball?") == "<image>where is the red ball? answer:"


def test_processor_expands_image_and_matches_training_preprocessing():
    _, processor = build_model(TINY)
    scene = render_scene(0)
    inputs = processor(images=scene.image, text=build_prompt("describe the scene"), return_tensors="pt")
    n_img = int((inputs["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<image>")).sum())
    assert n_img == TINY.num_image_tokens
    assert inputs["pixel_values"].shape == (1, 3, TINY.image_size, TINY.image_size)
    ours = preprocess_images([scene.image], TINY.image_size)
    assert np.abs(ours - inputs["pixel_values"].numpy()).max() < 1e-4


def test_save_load_round_trip_gives_same_tokens(tmp_path):
    torch.manual_seed(0)
    model, processor = build_model(TINY)
    save(model, processor, tmp_path / "w", TINY)
    loaded, proc2 = load(tmp_path / "w")
    scene = render_scene(1)
    inputs = processor(images=scene.image, text=build_prompt("what is on the table?"), return_tensors="pt")
    inputs2 = proc2(images=scene.image, text=build_prompt("what is on the table?"), return_tensors="pt")
    assert torch.equal(inputs["input_ids"], inputs2["input_ids"])
    model.eval()
    with torch.inference_mode():
        a = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        b = loaded.generate(**inputs2, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert torch.equal(a, b)


def test_load_refuses_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "nothing")


# ------------------------------------------------------------------ shipped weights
needs_weights = pytest.mark.skipif(
    not (DEFAULT_WEIGHTS_DIR / "config.json").is_file(),
    reason=f"no shipped weights in {DEFAULT_WEIGHTS_DIR} (train: python -m vlm_ros.embedded.train)",
)

# Floors a little under the accuracy measured on the same fixed set (see TRAINING.md); a regression fails.
# Measured on this set (20 scenes) for the shipped weights (the 6-minute GPU run, ninth session): grounding 0.94
# (16 of 17 present objects), counting 19/20, colour 20/20, shape 19/20, existence 19/20, left/right 16/16. Each
# floor allows two answers fewer.
FLOORS: dict[str, float] = {"grounding": 0.82, "counting": 0.85, "color": 0.9, "shape": 0.85, "existence": 0.85,
                            "left_right": 0.87}
FIXED_SCENES = 20


@needs_weights
def test_shipped_weights_are_small_and_load_offline():
    from transformers import LlavaForConditionalGeneration

    size = sum(f.stat().st_size for f in DEFAULT_WEIGHTS_DIR.glob("*.safetensors"))
    assert 0 < size <= 20 * 1024 * 1024
    model = LlavaForConditionalGeneration.from_pretrained(DEFAULT_WEIGHTS_DIR, local_files_only=True)
    assert model.config.model_type == "llava"


@needs_weights
def test_shipped_weights_meet_accuracy_floors():
    from vlm_ros.embedded.evaluate import evaluate

    torch.set_num_threads(2)
    res = evaluate(DEFAULT_WEIGHTS_DIR, n=FIXED_SCENES, seed_start=0)
    res.pop("_queries")
    for key, floor in FLOORS.items():
        assert res[key] is not None and res[key] >= floor, (key, res[key], floor, res)
    # the geometry of its grounded targets (depth-layer masks from the scenes' depth): the issue's targets
    geometry = res["geometry"]
    assert geometry["targets"] >= 20 and geometry["mask_iou"]["n"] == geometry["targets"], geometry
    assert geometry["mask_iou"]["median"] >= 0.85, geometry
    assert geometry["centroid_error_m"]["median"] <= 0.015, geometry
    assert all(geometry["extent_error_m"][axis]["median"] <= 0.015 for axis in "xyz"), geometry
