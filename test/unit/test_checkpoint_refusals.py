"""Checkpoints that would load wrong are refused with the reason: mismatched weights, remote-code Florence-2."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from vlm_ros.models.base import CheckpointError
from vlm_ros.models.registry import load_adapter
from vlm_ros.testing.tiny import build_tiny_llava
from vlm_ros.testing.tiny_florence2 import build_tiny_florence2


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


def rewrite_weights(src, dst, edit):
    """A copy of the checkpoint `src` whose tensors `edit` (dict -> dict) has changed."""
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    save_file(edit(dict(tensors)), dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_a_matching_checkpoint_loads(llava_dir):
    assert load_adapter(llava_dir, "llava").family == "llava"


def test_renamed_keys_are_refused_as_missing_and_unexpected(llava_dir, tmp_path):
    def rename(tensors):
        return {(f"old_prefix.{k}" if ".layers.1." in k else k): v for k, v in tensors.items()}

    bad = rewrite_weights(llava_dir, tmp_path / "renamed", rename)
    with pytest.raises(CheckpointError) as error:
        load_adapter(bad)
    text = str(error.value)
    assert "do not match its config.json" in text and "random weights" in text
    assert "25 missing (model.language_model.layers.1." in text and "... 20 more" in text
    assert "25 unexpected (old_prefix." in text


def test_missing_keys_alone_are_refused(llava_dir, tmp_path):
    bad = rewrite_weights(llava_dir, tmp_path / "missing",
                          lambda t: {k: v for k, v in t.items() if "multi_modal_projector" not in k})
    with pytest.raises(CheckpointError, match=r"4 missing \(model\.multi_modal_projector\.linear_1\.bias"):
        load_adapter(bad)


def test_a_tensor_of_another_shape_is_refused_with_both_shapes(llava_dir, tmp_path):
    def widen(tensors):
        key = next(k for k in tensors if k.endswith("layers.0.self_attn.q_proj.weight") and "language" in k)
        tensors[key] = torch.zeros(tensors[key].shape[0], tensors[key].shape[1] + 1)
        return tensors

    bad = rewrite_weights(llava_dir, tmp_path / "shape", widen)
    with pytest.raises(CheckpointError, match=r"1 with another shape \(model\.language_model\.layers\.0\.self_attn"
                                              r"\.q_proj\.weight \(32, 33\) vs \(32, 32\)\)"):
        load_adapter(bad)


def test_an_original_remote_code_florence2_directory_is_refused_with_what_to_use(tmp_path):
    # The original Florence-2 repositories: config.json with auto_map naming modeling_florence2.py, which ships
    # beside it (its content does not matter: it is never imported).
    original = tmp_path / "Florence-2-base"
    build_tiny_florence2(original)
    config = json.loads((original / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_florence2.Florence2Config",
                          "AutoModelForCausalLM": "modeling_florence2.Florence2ForConditionalGeneration"}
    (original / "config.json").write_text(json.dumps(config))
    for family in ("auto", "florence2"):
        with pytest.raises(CheckpointError, match="original Florence-2 repository") as error:
            load_adapter(original, family)
        assert "transformers-native Florence-2 checkpoint" in str(error.value)
        assert "convert_florence2_original_pytorch_to_hf.py" in str(error.value)
    # the module file alone (auto_map removed) is recognised as well
    del config["auto_map"]
    (original / "config.json").write_text(json.dumps(config))
    (original / "modeling_florence2.py").write_text("raise SystemExit('never imported')\n")
    with pytest.raises(CheckpointError, match="original Florence-2 repository"):
        load_adapter(original)
