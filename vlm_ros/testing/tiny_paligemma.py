"""A tiny random PaliGemma (SigLIP 2x32 + Gemma 2x32) or PaliGemma 2 (Gemma 2 decoder), saved like a checkpoint."""

from __future__ import annotations

from pathlib import Path

from vlm_ros.testing.tiny import build_tokenizer, seeded

IMAGE_SIZE = 32  # SigLIP input (real checkpoints: 224, 448 or 896)
PATCH_SIZE = 8  # -> (32 / 8)^2 = 16 image tokens (real: 256, 1024, 4096)
EXTRA_WORDS = ["caption", "en", "detect", "segment", "describe", "mug", "person", "car"]


def build_tiny_paligemma(path: str | Path, seed: int = 0, version: int = 1) -> Path:
    """Save a ~0.2 M-parameter PaliGemma (version=1: Gemma) or PaliGemma 2 (version=2: Gemma 2) under `path`."""
    from transformers import (
        Gemma2Config,
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipVisionConfig,
    )
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    if version not in (1, 2):
        raise ValueError(f"PaliGemma version must be 1 or 2, got {version}")
    seeded(seed)
    tokenizer = build_tokenizer(["<image>"], EXTRA_WORDS, bos="<bos>", eos="<eos>", pad="<pad>")
    n_tokens = (IMAGE_SIZE // PATCH_SIZE) ** 2
    image_processor = SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                              image_seq_length=n_tokens)
    # The processor adds the 1024 <locYYYY> and 128 <segNNN> tokens (real Gemma tokenizers already have them).
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    vocab = len(processor.tokenizer)
    text_kwargs = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, initializer_range=0.5)
    # Untied embeddings and a wide init: a tiny tied Gemma greedily repeats its last token, which would make
    # the engine-vs-generate comparisons trivial; with these the random output varies from token to token.
    text = GemmaConfig(**text_kwargs) if version == 1 else Gemma2Config(**text_kwargs, sliding_window=64)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
    config = PaliGemmaConfig(vision_config=vision, text_config=text, image_token_index=processor.image_token_id,
                             vocab_size=vocab, projection_dim=32, hidden_size=32,
                             tie_word_embeddings=False)
    model = PaliGemmaForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
