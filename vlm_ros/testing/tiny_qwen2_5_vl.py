"""A tiny random Qwen2.5-VL, saved like a released checkpoint (image processor, tokenizer, chat template)."""

from __future__ import annotations

from pathlib import Path

from vlm_ros.testing.tiny import build_tokenizer, save_as_released, seeded

SPECIAL = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
EXTRA_WORDS = ["locate", "every", "output", "bbox", "coordinates", "json", "format", "system", "you", "helpful",
               "categories", "instance", "belongs", "following", "report", "mug", "person"]

# The Qwen2.5-VL chat format (system turn by default, image as <|vision_start|><|image_pad|><|vision_end|>),
# written for this test model; released checkpoints ship their own template in the same format.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen_tokenizer():
    """The tiny tokenizer of the Qwen VL families and the ids of its special tokens."""
    tokenizer = build_tokenizer(SPECIAL, EXTRA_WORDS, bos="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>")
    return tokenizer, {tok: tokenizer.convert_tokens_to_ids(tok) for tok in [*SPECIAL, "<|endoftext|>"]}


def text_token_ids(ids: dict[str, int]) -> dict[str, int]:
    """The decoder config's special token ids."""
    return dict(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])


def vision_token_ids(ids: dict[str, int]) -> dict[str, int]:
    """The model config's image/video placeholder ids."""
    return dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])


def save_like_released(model, processor, ids: dict[str, int], path: str | Path, processor_class: str) -> Path:
    """Save model and processor as a released Qwen VL checkpoint is: generation stops at <|im_end|> or
    <|endoftext|>, and the files name the stock processor class."""
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    return save_as_released(model, processor, path, processor_class)


def build_tiny_qwen2_5_vl(path: str | Path, seed: int = 0) -> Path:
    """Save a ~0.1 M-parameter Qwen2.5-VL (ViT 2x32 with 14-px patches and 2x2 merge; Qwen2 decoder 2x32)."""
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from vlm_ros.models.qwen2_5_vl import ImageOnlyQwen2_5_VLProcessor, Qwen25VLAdapter

    seeded(seed)
    tokenizer, ids = qwen_tokenizer()
    # The released patch geometry (14-px patches, 2x2 merge -> multiples of 28) and pixel limits.
    image_processor = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2,
                                               min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    processor = ImageOnlyQwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                             chat_template=CHAT_TEMPLATE)
    head_dim = 16
    config = Qwen2_5_VLConfig(
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1]),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=32 // head_dim, num_key_value_heads=1, max_position_embeddings=1024,
                         # M-RoPE sections (temporal, height, width) over head_dim / 2 = 8 frequencies
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
                         initializer_range=0.2, **text_token_ids(ids)),
        tie_word_embeddings=False, **vision_token_ids(ids),
    )
    return save_like_released(Qwen25VLAdapter.model_class(config).eval(), processor, ids, path, "Qwen2_5_VLProcessor")
