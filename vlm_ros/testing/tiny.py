"""Shared pieces for tiny models: a word-level tokenizer trained offline, and the tiny LLaVA model."""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = (
    "the a an is are there what where how many which color colour shape left right of on in and "
    "red green blue yellow orange purple white black ball cube cone cylinder ring mug cup table scene "
    "describe find locate show me point to it this that yes no one two three four five six small large "
    "object objects image picture photo , . ? : ! user assistant answer question"
).split()


def save_as_released(model, processor, path: str | Path, processor_class: str = "") -> Path:
    """save_pretrained both; with `processor_class`, the saved files name that stock processor class, as a released
    checkpoint's do (the image-only subclass the adapter loads with is a loading detail)."""
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    for name in ("processor_config.json", "tokenizer_config.json", "preprocessor_config.json"):
        file = path / name
        if processor_class and file.is_file():
            data = json.loads(file.read_text())
            if "processor_class" in data:
                data["processor_class"] = processor_class
                file.write_text(json.dumps(data, indent=2) + "\n")
    return path


def build_tokenizer(extra_special: list[str], extra_words: list[str] = (), bos="<s>", eos="</s>", pad="<pad>"):
    """A word-level PreTrainedTokenizerFast with the given special tokens (image placeholders, loc tokens...)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [pad, "<unk>", bos, eos, *extra_special]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys([*specials, *WORDS, *extra_words]))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token="<unk>",
                                   additional_special_tokens=list(extra_special))
    return fast


def seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)


def build_tiny_llava(path: str | Path, seed: int = 0, text_hidden: int = 32, text_layers: int = 2) -> Path:
    """A ~0.5 M-parameter LLaVA (CLIP 2x32 on 32x32 images, 8-px patches -> 16 image tokens; Llama 2x32).

    text_hidden / text_layers make the decoder larger (its MLP is 2 x text_hidden), e.g. for memory tests.
    """
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    seeded(seed)
    tokenizer = build_tokenizer(["<image>"])
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=text_hidden, intermediate_size=2 * text_hidden,
                       num_hidden_layers=text_layers,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=image_token_id,
                         vision_feature_select_strategy="default", vision_feature_layer=-1, image_seq_length=16)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    image_processor = CLIPImageProcessorPil(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32},
                                            do_center_crop=False)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
