"""Conformance with released checkpoints: the prompts and input ids the adapters build for describe / answer /
ground on a 640x480 frame equal what the checkpoint's own processor and chat template build (the model card's way).

The released files are not in the repository: their facts are (released_checkpoints.json: the exact prompt, the
input ids' length and sha256, the image-token count per task, and the processor settings the counts follow from).
- Always: the adapters' prompts over the tiny test checkpoints (whose chat templates stand in for the released ones)
  equal the released prompts, and the adapters' own size logic gives the released image-token count for 640x480.
- With VLM_ROS_CHECKPOINT_FILES=/dir holding the released processor/tokenizer/template files in one folder per
  checkpoint (named as in the facts): each adapter loads those files beside a tiny random model of the same
  architecture (vocabulary and special ids as released), and its prompts and input ids are compared token for token
  with the released processor's and with the facts. Run `python test/unit/test_conformance_released.py` with the
  variable set to print the facts afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vlm_ros.core.types import Frame, Request, Task

FACTS = json.loads((Path(__file__).with_name("released_checkpoints.json")).read_text())
FILES = os.environ.get("VLM_ROS_CHECKPOINT_FILES", "")
REQUESTS = {"describe": Request(Task.DESCRIBE), "answer": Request(Task.ANSWER, "what color is the mug?"),
            "ground": Request(Task.GROUND, "where is the red mug?")}
CHAT_TEMPLATE_FAMILIES = ("qwen2_5_vl", "idefics3", "llava")


def frame_640x480() -> Frame:
    return Frame(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8), stamp_ns=1, camera="front")


def ids_fact(ids: list[int]) -> dict:
    return {"input_ids_len": len(ids), "input_ids_sha256": hashlib.sha256(json.dumps(ids).encode()).hexdigest()}


# --- always: no released files needed ---------------------------------------------------------------------


def build_tiny(family: str, path: Path) -> Path:
    from vlm_ros.testing.tiny import build_tiny_llava
    from vlm_ros.testing.tiny_blip2 import build_tiny_blip2
    from vlm_ros.testing.tiny_idefics3 import build_tiny_idefics3
    from vlm_ros.testing.tiny_qwen2_5_vl import build_tiny_qwen2_5_vl

    builders = {"qwen2_5_vl": build_tiny_qwen2_5_vl, "idefics3": build_tiny_idefics3, "llava": build_tiny_llava,
                "blip2": build_tiny_blip2}
    return builders[family](path)


@pytest.mark.parametrize("checkpoint", sorted(FACTS))
def test_adapter_prompts_equal_the_released_prompts(checkpoint, tmp_path):
    from vlm_ros.models.registry import load_adapter

    facts = FACTS[checkpoint]
    adapter = load_adapter(build_tiny(facts["family"], tmp_path / "tiny"), facts["family"])
    for task, request in REQUESTS.items():
        assert adapter.prompt(request) == facts["tasks"][task]["prompt"], task


def test_qwen2_5_vl_size_logic_gives_the_released_image_token_count():
    from vlm_ros.models.remote import qwen_input_size

    facts = FACTS["Qwen2.5-VL-3B-Instruct"]
    s = facts["processor_settings"]  # the released preprocessor_config.json
    w, h = qwen_input_size(640, 480)  # smart resize with the released patch grid and pixel limits
    factor = s["patch_size"] * s["merge_size"]
    assert factor == 28 and (s["min_pixels"], s["max_pixels"]) == (3136, 12845056)
    assert (w // factor) * (h // factor) == facts["image_tokens_640x480"]


def test_smolvlm_size_logic_gives_the_released_image_token_count():
    from vlm_ros.models.idefics3 import idefics3_input_size

    facts = FACTS["SmolVLM-256M-Instruct"]
    s = facts["processor_settings"]  # the released preprocessor_config.json and processor_config.json
    h, w = idefics3_input_size(480, 640, longest_edge=s["longest_edge"], tile=s["tile"], do_image_splitting=True)
    tiles = (h // s["tile"]) * (w // s["tile"])
    assert (tiles + 1) * s["image_seq_len"] == facts["image_tokens_640x480"]  # tiles + the global image


# --- with the released files ---------------------------------------------------------------------------------

SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
         "num_key_value_heads": 1, "head_dim": 16, "depth": 2, "num_heads": 2, "out_hidden_size": 32, "ffn_dim": 64,
         "word_embed_proj_dim": 32, "encoder_hidden_size": 32, "image_text_hidden_size": 32}
WEIGHT_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")


def tiny_like_released(released: Path, family: str, path: Path) -> Path:
    """The released processor files beside a tiny random model with the released vocabulary and special ids."""
    from transformers import AutoConfig

    from vlm_ros.models.registry import adapter_class

    config = AutoConfig.from_pretrained(released, local_files_only=True)
    for sub in (config, *(getattr(config, n) for n in ("text_config", "vision_config", "qformer_config")
                          if getattr(config, n, None) is not None)):
        for key, value in SMALL.items():
            if isinstance(getattr(sub, key, None), int):
                setattr(sub, key, value)
        if getattr(sub, "layer_types", None):
            sub.layer_types = sub.layer_types[: sub.num_hidden_layers]
    if family == "qwen2_5_vl":
        config.vision_config.fullatt_block_indexes = [1]
        config.text_config.rope_parameters["mrope_section"] = [2, 3, 3]  # head_dim 16 -> 8 frequencies
    torch.manual_seed(0)
    model = adapter_class(family).model_class(config).eval()
    path.mkdir(parents=True)
    model.save_pretrained(path)
    for file in released.iterdir():
        if file.is_file() and file.name not in WEIGHT_FILES and not file.name.endswith(".py"):
            shutil.copy(file, path / file.name)
    return path


def reference_inputs(released: Path, family: str, user_text: str, image: np.ndarray) -> tuple[str, list[int]]:
    """(prompt, input ids) as the model card builds them with the released processor and chat template."""
    from PIL import Image
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    pil = Image.fromarray(image)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user_text}]}]
    if family == "qwen2_5_vl":
        # AutoProcessor needs torchvision for the video half here: tokenizer + image processor + the released
        # template, the image placeholder expanded to the merged patch count as the processor does
        tokenizer = AutoTokenizer.from_pretrained(released, local_files_only=True)
        images = AutoImageProcessor.from_pretrained(released, local_files_only=True)
        template = json.loads((released / "chat_template.json").read_text())["chat_template"]
        prompt = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                               add_generation_prompt=True)
        grid = images(images=[pil], return_tensors="pt")["image_grid_thw"][0]
        n_image = int(grid.prod()) // images.merge_size ** 2
        return prompt, tokenizer(prompt.replace("<|image_pad|>", "<|image_pad|>" * n_image)).input_ids
    processor = AutoProcessor.from_pretrained(released, local_files_only=True)
    if family in CHAT_TEMPLATE_FAMILIES:
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    else:  # BLIP-2: the model card's plain prompts
        prompt = user_text
    return prompt, processor(images=[pil], text=[prompt], return_tensors="pt")["input_ids"][0].tolist()


def image_token_id(adapter) -> int:
    config = adapter.model.config
    for key in ("image_token_id", "image_token_index"):
        if getattr(config, key, None) is not None:
            return int(getattr(config, key))
    raise AssertionError("no image token id in the config")


def released_inputs(checkpoint: str, tmp: Path) -> dict:
    """Per task: the adapter's and the reference's prompt and ids, and the image-token count."""
    from vlm_ros.models.registry import load_adapter

    facts = FACTS[checkpoint]
    released = Path(FILES) / checkpoint
    adapter = load_adapter(tiny_like_released(released, facts["family"], tmp / checkpoint), facts["family"])
    frame = frame_640x480()
    out = {}
    for task, request in REQUESTS.items():
        ids = adapter.prepare(frame, request).tensors["input_ids"][0].tolist()
        ref_prompt, ref_ids = reference_inputs(released, facts["family"], facts["user_text"][task], frame.image)
        out[task] = {"prompt": adapter.prompt(request), "ids": ids, "reference_prompt": ref_prompt,
                     "reference_ids": ref_ids, "image_tokens": ids.count(image_token_id(adapter))}
    return out


@pytest.mark.skipif(not FILES, reason="VLM_ROS_CHECKPOINT_FILES is not set (a folder with the released processor, "
                                      "tokenizer and chat-template files, one subfolder per checkpoint)")
@pytest.mark.parametrize("checkpoint", sorted(FACTS))
def test_input_ids_equal_the_released_processors_token_for_token(checkpoint, tmp_path):
    if not (Path(FILES) / checkpoint).is_dir():
        pytest.skip(f"{checkpoint} is not in {FILES}")
    facts = FACTS[checkpoint]
    for task, got in released_inputs(checkpoint, tmp_path).items():
        assert got["prompt"] == got["reference_prompt"] == facts["tasks"][task]["prompt"], task
        assert got["ids"] == got["reference_ids"], task
        assert ids_fact(got["ids"]) == {k: facts["tasks"][task][k] for k in ("input_ids_len", "input_ids_sha256")}
        assert got["image_tokens"] == facts["image_tokens_640x480"], task
        head = facts.get("expected_head_ids", [])  # ids that transformers' own tests hard-code for this template
        assert got["ids"][: len(head)] == head, task


if __name__ == "__main__":  # print the facts from the released files (VLM_ROS_CHECKPOINT_FILES)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for name in sorted(FACTS):
            result = released_inputs(name, Path(tmp))
            print(name, json.dumps({task: {"prompt": r["reference_prompt"], **ids_fact(r["reference_ids"]),
                                           "image_tokens": r["image_tokens"], "same_as_adapter": r["ids"] == r[
                                               "reference_ids"]} for task, r in result.items()}, indent=1))
