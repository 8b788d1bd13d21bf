"""A tiny random Qwen3-VL, saved like a released checkpoint (image processor, tokenizer, chat template)."""

from __future__ import annotations

from pathlib import Path

from vlm_ros.testing.tiny import seeded
from vlm_ros.testing.tiny_qwen2_5_vl import qwen_tokenizer, save_like_released, text_token_ids, vision_token_ids

# The Qwen3-VL chat format as the released Instruct checkpoints write it for one user turn with an image:
# no default system turn, the image as <|vision_start|><|image_pad|><|vision_end|> before the text.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_qwen3_vl(path: str | Path, seed: int = 0) -> Path:
    """Save a ~0.1 M-parameter Qwen3-VL (ViT 2x32, 16-px patches, 2x2 merge, one DeepStack layer; Qwen3 2x32)."""
    from transformers import Qwen3VLConfig
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from vlm_ros.models.qwen3_vl import ImageOnlyQwen3VLProcessor, Qwen3VLAdapter

    seeded(seed)
    tokenizer, ids = qwen_tokenizer()
    # The released patch geometry (16-px patches, 2x2 merge -> multiples of 32), pixel limits and normalisation.
    image_processor = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2,
                                               min_pixels=64 * 64, max_pixels=32 * 32 * 1280,
                                               image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    processor = ImageOnlyQwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                          chat_template=CHAT_TEMPLATE)
    head_dim = 16
    config = Qwen3VLConfig(
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                           num_position_embeddings=64, deepstack_visual_indexes=[0]),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=32 // head_dim, num_key_value_heads=1, head_dim=head_dim,
                         max_position_embeddings=1024,
                         # interleaved M-RoPE sections (temporal, height, width) over head_dim / 2 = 8 frequencies
                         rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [2, 3, 3],
                                          "mrope_interleaved": True},
                         initializer_range=0.2, **text_token_ids(ids)),
        tie_word_embeddings=False, **vision_token_ids(ids),
    )
    return save_like_released(Qwen3VLAdapter.model_class(config).eval(), processor, ids, path, "Qwen3VLProcessor")
