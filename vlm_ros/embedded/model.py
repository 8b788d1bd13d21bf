"""The embedded model at run time: its size configuration and loading of saved weights (a tiny LLaVA:
CLIP-ViT + Llama with a word-level tokenizer). Prompt and vocabulary: prompt.py; built from config objects for
training and tests: build.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from vlm_ros.embedded.prompt import LOC_BINS

DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass
class EmbeddedConfig:
    """Size of the model; unknown keys are refused by from_dict."""

    image_size: int = 128
    patch_size: int = 16
    vision_hidden: int = 160
    vision_layers: int = 2
    vision_heads: int = 5
    text_hidden: int = 192
    text_layers: int = 6
    text_heads: int = 6
    max_positions: int = 256
    # CLIP hidden state fed to the projector: the last layer's output. (Trained without the dense auxiliary loss
    # of train.py, those features grew without bound and the decoder ignored the image; with it they stay put.)
    vision_feature_layer: int = -1
    loc_bins: int = LOC_BINS

    @classmethod
    def from_dict(cls, d: dict) -> EmbeddedConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown EmbeddedConfig keys: {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def load(path: str | Path = DEFAULT_WEIGHTS_DIR, dtype=None):
    """(model in eval mode, processor) from a local directory, never the hub."""
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no embedded model at {path} (train one: python -m vlm_ros.embedded.train)")
    model = LlavaForConditionalGeneration.from_pretrained(path, local_files_only=True, dtype=dtype or torch.float32)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    model.eval()
    return model, processor
