"""Real-size model configurations with random weights, for GPU benchmarks (timings do not depend on weights).

- `so400m_qwen2_0_5b`: a LLaVA-style model with a SigLIP-so400m/14 encoder at 384 px (729 image tokens) and a
  Qwen2-0.5B-size decoder.
- `qwen2_5_vl_3b`: the Qwen2.5-VL-3B architecture (built through the Qwen2.5-VL adapter when it is importable).
- `smolvlm_256m`: the SmolVLM-256M-Instruct architecture (SigLIP 12x768 on 512-px tiles, Llama 30x576).
- `florence2_base`: the Florence-2-base architecture (DaViT 1/1/9/1 blocks at 128..1024 channels on 768-px
  images, 577 image tokens; BART 6+6 layers, d=768), sizes from the released config.json.
- `qwen3_vl_2b`: the Qwen3-VL-2B architecture (ViT 24x1024 with DeepStack, Qwen3 28x2048); sizes from the released
  config as described in public reimplementations, not checked against the file itself.
"""

from __future__ import annotations

import torch

from vlm_ros.testing.tiny import build_tokenizer

QWEN_VOCAB = 151936


def so400m_qwen2_0_5b(device: str = "cuda", dtype: torch.dtype = torch.bfloat16):
    """(LlavaAdapter, processor) with random weights, built directly on the device."""
    from transformers import (
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        Qwen2Config,
        SiglipImageProcessorPil,
        SiglipVisionConfig,
    )

    from vlm_ros.models.llava import LlavaAdapter

    tokenizer = build_tokenizer(["<image>"])
    vision = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                                image_size=384, patch_size=14)
    text = Qwen2Config(vocab_size=QWEN_VOCAB, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                       tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="full", vision_feature_layer=-1, image_seq_length=729)
    config._attn_implementation = "sdpa"
    with torch.device(device):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = LlavaForConditionalGeneration(config).eval()
        finally:
            torch.set_default_dtype(previous)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = LlavaProcessor(image_processor=SiglipImageProcessorPil(size={"height": 384, "width": 384}),
                               tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="full",
                               num_additional_image_tokens=0)
    return LlavaAdapter(model, processor)


CONFIGS = {"so400m-qwen2-0.5b": so400m_qwen2_0_5b}


def qwen2_5_vl_3b(device: str = "cuda", dtype: torch.dtype = torch.bfloat16):
    """A Qwen25VLAdapter over the Qwen2.5-VL-3B architecture with random weights, built on the device."""
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from vlm_ros.models.qwen2_5_vl import ImageOnlyQwen2_5_VLProcessor, Qwen25VLAdapter
    from vlm_ros.testing.tiny_qwen2_5_vl import CHAT_TEMPLATE, EXTRA_WORDS, SPECIAL

    tokenizer = build_tokenizer(SPECIAL, EXTRA_WORDS, bos="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>")
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in [*SPECIAL, "<|endoftext|>"]}
    image_processor = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2,
                                               min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    processor = ImageOnlyQwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                             chat_template=CHAT_TEMPLATE)
    config = Qwen2_5_VLConfig(
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[7, 15, 23, 31]),
        text_config=dict(vocab_size=QWEN_VOCAB, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                         num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    config._attn_implementation = "sdpa"
    with torch.device(device):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = Qwen25VLAdapter.model_class(config).eval()
        finally:
            torch.set_default_dtype(previous)
    model.generation_config.eos_token_id = [ids["<|im_end|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    return Qwen25VLAdapter(model, processor)


CONFIGS["qwen2.5-vl-3b"] = qwen2_5_vl_3b


def _on_device(model_class, config, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """model_class(config) with random weights created directly on the device in dtype, in eval mode."""
    config._attn_implementation = "sdpa"
    with torch.device(device):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            return model_class(config).eval()
        finally:
            torch.set_default_dtype(previous)


def smolvlm_256m(device: str = "cuda", dtype: torch.dtype = torch.bfloat16):
    """An Idefics3Adapter over the SmolVLM-256M-Instruct architecture with random weights."""
    from transformers import Idefics3Config, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    from vlm_ros.models.idefics3 import Idefics3Adapter
    from vlm_ros.testing.tiny_idefics3 import CHAT_TEMPLATE, EXTRA_WORDS, SPECIAL

    tokenizer = build_tokenizer(SPECIAL, EXTRA_WORDS, bos="<|im_start|>", eos="<|im_end|>", pad="<|im_end|>")
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": 2048}, max_image_size={"longest_edge": 512},
                                                do_image_splitting=True)
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=64,
                                  chat_template=CHAT_TEMPLATE)
    config = Idefics3Config(
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=512, patch_size=16),
        text_config=dict(model_type="llama", vocab_size=49280, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=8192, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        image_token_id=processor.image_token_id, scale_factor=4, tie_word_embeddings=False)
    model = _on_device(Idefics3Adapter.model_class, config, device, dtype)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return Idefics3Adapter(model, processor)


def qwen3_vl_2b(device: str = "cuda", dtype: torch.dtype = torch.bfloat16):
    """A Qwen3VLAdapter over the Qwen3-VL-2B architecture with random weights."""
    from transformers import Qwen3VLConfig
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from vlm_ros.models.qwen3_vl import ImageOnlyQwen3VLProcessor, Qwen3VLAdapter
    from vlm_ros.testing.tiny_qwen2_5_vl import EXTRA_WORDS, SPECIAL
    from vlm_ros.testing.tiny_qwen3_vl import CHAT_TEMPLATE

    tokenizer = build_tokenizer(SPECIAL, EXTRA_WORDS, bos="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>")
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in [*SPECIAL, "<|endoftext|>"]}
    image_processor = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2,
                                               min_pixels=64 * 64, max_pixels=32 * 32 * 1280,
                                               image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    processor = ImageOnlyQwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                          chat_template=CHAT_TEMPLATE)
    config = Qwen3VLConfig(
        vision_config=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
                           deepstack_visual_indexes=[5, 11, 17]),
        text_config=dict(vocab_size=QWEN_VOCAB, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                         num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=262144,
                         rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20],
                                          "mrope_interleaved": True},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True)
    model = _on_device(Qwen3VLAdapter.model_class, config, device, dtype)
    model.generation_config.eos_token_id = [ids["<|im_end|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    return Qwen3VLAdapter(model, processor)


CONFIGS["smolvlm-256m"] = smolvlm_256m
CONFIGS["qwen3-vl-2b"] = qwen3_vl_2b


def florence2_base(device: str = "cuda", dtype: torch.dtype = torch.bfloat16):
    """A Florence2Adapter over the Florence-2-base architecture with random weights."""
    from transformers import (
        BartConfig,
        CLIPImageProcessorPil,
        Florence2Config,
        Florence2Processor,
        Florence2VisionConfig,
    )

    from vlm_ros.models.florence2 import Florence2Adapter
    from vlm_ros.testing.tiny_florence2 import MARKUP, POST_PROCESSOR_CONFIG, PROMPT_WORDS

    tokenizer = build_tokenizer(["<image>", *MARKUP, *[f"<loc_{i}>" for i in range(1000)]], extra_words=PROMPT_WORDS)
    tokenizer._set_model_specific_special_tokens(special_tokens={"image_token": "<image>"})
    vision = Florence2VisionConfig(depths=(1, 1, 9, 1), patch_size=(7, 3, 3, 3), patch_stride=(4, 2, 2, 2),
                                   patch_padding=(3, 1, 1, 1), patch_prenorm=(False, True, True, True),
                                   embed_dim=(128, 256, 512, 1024), num_heads=(4, 8, 16, 32), num_groups=(4, 8, 16, 32),
                                   window_size=12, projection_dim=768, max_position_embeddings=50, drop_path_rate=0.0)
    text = BartConfig(vocab_size=51289, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                      decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072,
                      max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                      decoder_start_token_id=tokenizer.eos_token_id, forced_eos_token_id=None)
    config = Florence2Config(vision_config=vision, text_config=text,
                             image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    model = _on_device(Florence2Adapter.model_class, config, device, dtype)
    image_processor = CLIPImageProcessorPil(size={"height": 768, "width": 768}, crop_size={"height": 768, "width": 768},
                                            do_center_crop=False, image_seq_length=577)
    processor = Florence2Processor(image_processor=image_processor, tokenizer=tokenizer,
                                   post_processor_config=POST_PROCESSOR_CONFIG)
    return Florence2Adapter(model, processor)


CONFIGS["florence2-base"] = florence2_base
