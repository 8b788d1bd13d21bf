"""Which adapter serves a model directory: by `family`, or read from the model's own config."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch

from vlm_ros.models.base import CheckpointError, VlmAdapter

# family -> "module:Class"; imported only when used, so one family's import problem cannot break another.
ADAPTERS = {
    "embedded": "vlm_ros.models.llava:EmbeddedAdapter",
    "llava": "vlm_ros.models.llava:LlavaAdapter",
    "florence2": "vlm_ros.models.florence2:Florence2Adapter",
    "qwen2_5_vl": "vlm_ros.models.qwen2_5_vl:Qwen25VLAdapter",
    "qwen3_vl": "vlm_ros.models.qwen3_vl:Qwen3VLAdapter",
    "idefics3": "vlm_ros.models.idefics3:Idefics3Adapter",
    "paligemma": "vlm_ros.models.paligemma:PaliGemmaAdapter",
    "blip2": "vlm_ros.models.blip2:Blip2Adapter",
    "instructblip": "vlm_ros.models.blip2:InstructBlipAdapter",
}
# transformers model_type -> family
MODEL_TYPES = {
    "llava": "llava",
    "florence2": "florence2",
    "qwen2_5_vl": "qwen2_5_vl",
    "qwen3_vl": "qwen3_vl",
    "idefics3": "idefics3",
    "smolvlm": "idefics3",
    "paligemma": "paligemma",
    "blip-2": "blip2",
    "instructblip": "instructblip",
}


def default_model_dir() -> Path:
    from vlm_ros.embedded.model import DEFAULT_WEIGHTS_DIR

    return Path(DEFAULT_WEIGHTS_DIR)


def detect_family(path: str | Path) -> str:
    path = Path(path)
    if (path / "embedded_config.json").is_file():
        return "embedded"
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no config.json in model directory '{path}'")
    model_type = json.loads(config_file.read_text()).get("model_type", "")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model type '{model_type}' of '{path}' is not supported; families: {sorted(ADAPTERS)}")
    return MODEL_TYPES[model_type]


def refuse_remote_code_layout(path: Path) -> None:
    """Refuse a known remote-code (trust_remote_code) layout of a family we serve natively.

    The original Florence-2 repositories name modeling_florence2.py in config.json's `auto_map`; their tensor
    names differ from transformers' Florence2ForConditionalGeneration, so they would load with hundreds of random
    tensors (and then fail in the processor). Other mismatches are caught by `load_checked_model`.
    """
    config_file = path / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    remote_code = bool(config.get("auto_map")) or (path / "modeling_florence2.py").is_file()
    if config.get("model_type") == "florence2" and remote_code:
        raise CheckpointError(
            f"'{path}' is an original Florence-2 repository (remote-code layout: config.json auto_map, "
            "modeling_florence2.py); its weights do not fit transformers' Florence2ForConditionalGeneration. "
            "Use a transformers-native Florence-2 checkpoint (model_type florence2 without auto_map, e.g. the "
            "florence-community/Florence-2-base or -large conversions), or convert this one with transformers' "
            "models/florence2/convert_florence2_original_pytorch_to_hf.py")


def adapter_class(family: str) -> type[VlmAdapter]:
    if family not in ADAPTERS:
        raise ValueError(f"unknown model family '{family}'; choose one of {sorted(ADAPTERS)} or 'auto'")
    module, name = ADAPTERS[family].split(":")
    return getattr(importlib.import_module(module), name)


def load_adapter(model: str | Path = "", family: str = "auto", device: str = "cpu",
                 dtype: torch.dtype | None = None) -> VlmAdapter:
    """Load a model from a local directory ('' = the embedded default model) with the right adapter."""
    path = Path(model) if str(model) else default_model_dir()
    if not path.is_dir():
        raise FileNotFoundError(f"model directory '{path}' does not exist (no model hub is contacted)")
    refuse_remote_code_layout(path)
    family = detect_family(path) if family == "auto" else family
    return adapter_class(family).from_pretrained(path, device=device, dtype=dtype, local_files_only=True)
