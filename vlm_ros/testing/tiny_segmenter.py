"""Tiny random-weight box-prompted segmenters (SAM, SAM 2) saved like real checkpoints.

EdgeTAM is not built here: its vision backbone is a timm model (RepViT), and timm needs torchvision.
"""

from __future__ import annotations

import json
from pathlib import Path

from vlm_ros.testing.tiny import seeded

IMAGE_SIZE = 64  # model input side (the released checkpoints use 1024)


def build_tiny_sam(path: str | Path, seed: int = 0) -> Path:
    """SAM (ViT 2x32 on 64x64 inputs, 8-px patches -> an 8x8 embedding; prompt encoder and mask decoder d=16)."""
    from transformers import (
        SamConfig,
        SamImageProcessorPil,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    seeded(seed)
    vision = SamVisionConfig(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                             image_size=IMAGE_SIZE, patch_size=8, window_size=4, global_attn_indexes=[1],
                             num_pos_feats=8, mlp_dim=64)
    prompt = SamPromptEncoderConfig(hidden_size=16, image_size=IMAGE_SIZE, patch_size=8, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=16, mlp_dim=32, num_hidden_layers=1, num_attention_heads=2,
                                   iou_head_hidden_dim=16)
    model = SamModel(SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)).eval()
    mask_side = IMAGE_SIZE // 4  # the mask decoder upsamples the embedding 4x: 32x32 low-res masks, padded
    image_processor = SamImageProcessorPil(size={"longest_edge": IMAGE_SIZE},
                                           pad_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                           mask_size={"longest_edge": mask_side},
                                           mask_pad_size={"height": mask_side, "width": mask_side})
    path = Path(path)
    model.save_pretrained(path)
    SamProcessor(image_processor=image_processor).save_pretrained(path)
    return path


def build_tiny_sam2(path: str | Path, seed: int = 0) -> Path:
    """SAM 2 (Hiera 4 stages of 8..64 channels on 64x64 inputs; prompt encoder and mask decoder d=16).

    Sam2Processor cannot be built without torchvision, so its configuration is written as the released
    checkpoints carry it (a plain resize to IMAGE_SIZE x IMAGE_SIZE, ImageNet mean/std); transformers loads it
    where torchvision is present, and BoxSegmenter's image-only steps read it where it is not.
    """
    from transformers import (
        Sam2Config,
        Sam2HieraDetConfig,
        Sam2MaskDecoderConfig,
        Sam2Model,
        Sam2PromptEncoderConfig,
        Sam2VisionConfig,
    )

    seeded(seed)
    # blocks 0 | 1 | 2 3 | 4: the global-attention block (3) is not the first of a stage (no query pooling there)
    backbone = Sam2HieraDetConfig(hidden_size=8, image_size=IMAGE_SIZE, patch_stride=4, patch_kernel_size=7,
                                  patch_padding=3, blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[8, 16, 32, 64],
                                  num_attention_heads_per_stage=[1, 1, 1, 1], window_size_per_stage=[4, 4, 4, 4],
                                  global_attention_blocks=[3], window_positional_embedding_background_size=[2, 2])
    side = IMAGE_SIZE // 4
    vision = Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=[64, 32, 16, 8],
                              backbone_feature_sizes=[[side, side], [side // 2, side // 2], [side // 4, side // 4]],
                              fpn_hidden_size=16)
    prompt = Sam2PromptEncoderConfig(hidden_size=16, image_size=IMAGE_SIZE, patch_size=16, mask_input_channels=4)
    decoder = Sam2MaskDecoderConfig(hidden_size=16, mlp_dim=32, num_hidden_layers=1, num_attention_heads=2,
                                    iou_head_hidden_dim=16)
    config = Sam2Config(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
    model = Sam2Model(config).eval()
    path = Path(path)
    model.save_pretrained(path)
    image_processor = {
        "image_processor_type": "Sam2ImageProcessor", "do_resize": True, "do_rescale": True, "do_normalize": True,
        "do_convert_rgb": True, "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        "mask_size": {"height": side, "width": side}, "resample": 2, "rescale_factor": 1 / 255,
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
    }
    processor = {"image_processor": image_processor, "processor_class": "Sam2Processor", "point_pad_value": -10,
                 "target_size": IMAGE_SIZE}
    (path / "processor_config.json").write_text(json.dumps(processor, indent=2))
    return path
