"""A tiny random-weight Florence-2 (DaViT 2 stages + BART 1+1 layers, d=32) saved like a real checkpoint."""

from __future__ import annotations

from pathlib import Path

from vlm_ros.testing.tiny import build_tokenizer, seeded

IMAGE_SIZE = 32  # model input (the released checkpoints use 768)
# Florence-2's markup tokens; the released tokenizer also has <loc_0>..<loc_999>.
MARKUP = ["<od>", "</od>", "<ocr>", "</ocr>", "<poly>", "</poly>", "<sep>", "<ground>", "<obj>", "<box>", "</box>"]
PROMPT_WORDS = ("does describe detail shown with paragraph locate phrases caption category name text "
                "regions region mask polygon proposals descriptions").split()
# Parse rules for Florence2Processor.post_process_generation (the released processor_config has the same keys).
POST_PROCESSOR_CONFIG = {
    "ocr": {"PATTERN": r"(.+?)<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>",
            "AREA_THRESHOLD": 0.0},
    "phrase_grounding": {"banned_grounding_tokens": ["the image"]},
    "pure_text": {},
    "description_with_bboxes": {},
    "description_with_polygons": {},
    "polygons": {},
    "bboxes": {},
    "description_with_bboxes_or_polygons": {},
}


def build_tiny_florence2(path: str | Path, seed: int = 0, text_std: float | None = None) -> Path:
    """Florence-2 with 32x32 inputs (8x8 feature map after strides 4, 2 -> 16 + 1 image tokens)."""
    from transformers import (
        BartConfig,
        CLIPImageProcessorPil,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
        Florence2VisionConfig,
    )

    seeded(seed)
    locs = [f"<loc_{i}>" for i in range(1000)]
    tokenizer = build_tokenizer(["<image>", *MARKUP, *locs], extra_words=PROMPT_WORDS)
    # Florence2Processor reads tokenizer.image_token / image_token_id (a named extra special token in v5)
    tokenizer._set_model_specific_special_tokens(special_tokens={"image_token": "<image>"})
    vision = Florence2VisionConfig(depths=(1, 1), patch_size=(7, 3), patch_stride=(4, 2), patch_padding=(3, 1),
                                   patch_prenorm=(False, True), embed_dim=(16, 32), num_heads=(2, 2), num_groups=(2, 2),
                                   window_size=2, projection_dim=32, max_position_embeddings=16, drop_path_rate=0.0)
    text = BartConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                      encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                      max_position_embeddings=128, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                      decoder_start_token_id=tokenizer.eos_token_id, forced_eos_token_id=None)
    config = Florence2Config(vision_config=vision, text_config=text,
                             image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    model = Florence2ForConditionalGeneration(config).eval()
    if text_std is not None:  # random weights at the default init answer EOS at once: a larger spread of the
        # BART weights gives greedy answers that differ per prompt, which is what parity tests need to see
        import torch

        with torch.no_grad():
            for p in model.model.language_model.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, text_std)
    feature = IMAGE_SIZE // 8  # strides 4 and 2
    image_processor = CLIPImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                            crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_center_crop=False,
                                            image_seq_length=feature * feature + 1)
    processor = Florence2Processor(image_processor=image_processor, tokenizer=tokenizer,
                                   post_processor_config=POST_PROCESSOR_CONFIG)
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
