"""A tiny random Idefics3 / SmolVLM (model_type "idefics3") or SmolVLM2 (model_type "smolvlm") checkpoint."""

from __future__ import annotations

from pathlib import Path

from vlm_ros.testing.tiny import build_tokenizer, save_as_released, seeded

TILE = 32  # vision tile side (real SmolVLM: 512 / 384)
PATCH = 4  # -> 8x8 patches per tile
SCALE = 4  # pixel-shuffle factor -> (8 * 8) / 4^2 = 4 image tokens per tile (real SmolVLM-256M: 64)
# transformers 5.20's SmolVLM2 model merges image tokens in blocks of the vision patch size: the tokens per tile
# must be a multiple of PATCH there, else its forward fails on a reshape.
LONGEST_EDGE = 2 * TILE  # resize target of the longest edge before tiling (real SmolVLM: 4 x 512 = 2048)

SPECIAL = ["<|im_start|>", "<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>",
           *[f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]]
EXTRA_WORDS = ["user", "assistant", "can", "you", "describe", "this", "mug", "person"]

# The SmolVLM chat format ("<|im_start|>User:<image>question<end_of_utterance>\nAssistant:"), written for the
# test model; released checkpoints ship their own template in the same format.
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}: {{ message['content'] }}"
    "{% else %}{% if message['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% elif part['type'] == 'image' %}<image>{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def build_tiny_idefics3(path: str | Path, seed: int = 0, model_type: str = "idefics3") -> Path:
    """Save a ~0.1 M-parameter SmolVLM (SigLIP-style 2x32 on 32-px tiles; Llama 2x32) under `path`.

    model_type "idefics3" is the layout of SmolVLM / Idefics3 checkpoints, "smolvlm" that of SmolVLM2.
    """
    if model_type == "idefics3":
        from transformers import Idefics3Config as Config
        from transformers import Idefics3ForConditionalGeneration as Model
        from transformers import Idefics3Processor as Processor
        from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil as Images
        processor_class = "Idefics3Processor"
    elif model_type == "smolvlm":
        from transformers import SmolVLMConfig as Config
        from transformers import SmolVLMForConditionalGeneration as Model
        from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil as Images

        from vlm_ros.models.idefics3 import ImageOnlySmolVLMProcessor as Processor
        processor_class = "SmolVLMProcessor"
    else:
        raise ValueError(f"model_type must be 'idefics3' or 'smolvlm', got {model_type!r}")
    seeded(seed)
    tokenizer = build_tokenizer(SPECIAL, EXTRA_WORDS, bos="<|im_start|>", eos="<|im_end|>", pad="<|im_end|>")
    image_processor = Images(size={"longest_edge": LONGEST_EDGE}, max_image_size={"longest_edge": TILE},
                             do_image_splitting=True)
    tokens_per_tile = (TILE // PATCH) ** 2 // SCALE**2
    processor = Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=tokens_per_tile,
                          chat_template=CHAT_TEMPLATE)
    eou = tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    config = Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=TILE, patch_size=PATCH),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        image_token_id=processor.image_token_id, scale_factor=SCALE, tie_word_embeddings=False,
    )
    model = Model(config).eval()
    model.generation_config.eos_token_id = [eou, tokenizer.eos_token_id]  # SmolVLM ends a turn with <end_of_utterance>
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return save_as_released(model, processor, path, processor_class)
