"""Tiny random-weight open-vocabulary detectors (OWLv2, OWL-ViT, Grounding DINO) saved like real checkpoints."""

from __future__ import annotations

from pathlib import Path

from vlm_ros.testing.tiny import WORDS, seeded

OWL_IMAGE_SIZE = 32
OWL_MAX_TEXT = 16  # the released OWL checkpoints pad text queries to 16 tokens
# Grounding DINO's model pins these BERT ids as phrase delimiters ([CLS], [SEP], ".", "?"): a tokenizer for it
# must put those tokens at exactly these ids (transformers, modeling_grounding_dino.SPECIAL_TOKENS).
BERT_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ".": 1012, "?": 1029}


def _owl_tokenizer():
    """CLIP-style word-level tokenizer: <|startoftext|> text <|endoftext|>, padded to 16. The OWL text
    towers pool at argmax(input_ids) (the CLIP convention), so end-of-text must have the largest id."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = [w for w in dict.fromkeys(["photo", *WORDS]) if w not in ("!",)]
    vocab = {"!": 0, "<unk>": 1, "<|startoftext|>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", vocab["<|startoftext|>"]), ("<|endoftext|>", vocab["<|endoftext|>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                   pad_token="!", unk_token="<unk>", model_max_length=OWL_MAX_TEXT)


def _bert_tokenizer():
    """BERT-style word-level tokenizer with [CLS]/[SEP]/"."/"?" at BERT's ids (see BERT_IDS)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    size = max(BERT_IDS.values()) + 1
    names = [f"[unused{i}]" for i in range(size)]
    for tok, i in BERT_IDS.items():
        names[i] = tok
    free = [i for i in range(size) if names[i].startswith("[unused")][1:]  # keep low ids for unused tokens
    words = [w for w in dict.fromkeys(["photo", *WORDS]) if w not in BERT_IDS]
    for w, i in zip(words, free[200:], strict=False):  # more free ids than words
        names[i] = w
    vocab = {name: i for i, name in enumerate(names)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", BERT_IDS["[CLS]"]), ("[SEP]", BERT_IDS["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
                                   unk_token="[UNK]", mask_token="[MASK]", model_max_length=512)


def _grid_prior_boxes(model) -> None:
    """Zero the OWL box head's last layer: every box is then the model's grid prior (a patch-sized box whose
    centre is its patch's bottom-right grid corner), instead of the degenerate boxes random weights give."""
    import torch

    with torch.no_grad():
        model.box_head.dense2.weight.zero_()
        model.box_head.dense2.bias.zero_()


def _save(model, processor, path: str | Path) -> Path:
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def build_tiny_owlv2(path: str | Path, seed: int = 0) -> Path:
    """OWLv2 (ViT 1x32 on 32x32 inputs, 8-px patches -> a 4x4 grid of box predictions; text 1x32).

    Box regression is zeroed (see _grid_prior_boxes): box k is cell (row k // 4, column k % 4) of a 4x4 grid
    over the *padded square* input, centred on the cell's bottom-right corner; class scores stay random."""
    from transformers import (
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessorPil,
        Owlv2Processor,
        Owlv2TextConfig,
        Owlv2VisionConfig,
    )

    seeded(seed)
    tokenizer = _owl_tokenizer()
    text = Owlv2TextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, max_position_embeddings=OWL_MAX_TEXT, pad_token_id=0,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    vision = Owlv2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               image_size=OWL_IMAGE_SIZE, patch_size=8)
    model = Owlv2ForObjectDetection(Owlv2Config(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                                projection_dim=32)).eval()
    _grid_prior_boxes(model)
    image_processor = Owlv2ImageProcessorPil(size={"height": OWL_IMAGE_SIZE, "width": OWL_IMAGE_SIZE})
    return _save(model, Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer), path)


def build_tiny_owlvit(path: str | Path, seed: int = 0) -> Path:
    """OWL-ViT, same sizes and grid-prior boxes as build_tiny_owlv2 (plain resize instead of pad-to-square)."""
    from transformers import (
        OwlViTConfig,
        OwlViTForObjectDetection,
        OwlViTImageProcessorPil,
        OwlViTProcessor,
        OwlViTTextConfig,
        OwlViTVisionConfig,
    )

    seeded(seed)
    tokenizer = _owl_tokenizer()
    text = OwlViTTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=OWL_MAX_TEXT, pad_token_id=0,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    vision = OwlViTVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=OWL_IMAGE_SIZE, patch_size=8)
    model = OwlViTForObjectDetection(OwlViTConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                                  projection_dim=32)).eval()
    _grid_prior_boxes(model)
    size = {"height": OWL_IMAGE_SIZE, "width": OWL_IMAGE_SIZE}
    image_processor = OwlViTImageProcessorPil(size=size, crop_size=size)
    return _save(model, OwlViTProcessor(image_processor=image_processor, tokenizer=tokenizer), path)


def build_tiny_grounding_dino(path: str | Path, seed: int = 0, mm: bool = False) -> Path:
    """Grounding DINO (Swin 2 stages x 8 channels, BERT 1x32, d_model 32, 1+2 layers, 10 queries);
    `mm=True` builds the MM-Grounding-DINO variant (same processor and output format)."""
    import transformers
    from transformers import GroundingDinoImageProcessorPil, GroundingDinoProcessor, SwinConfig

    seeded(seed)
    prefix = "MMGroundingDino" if mm else "GroundingDino"
    config_class = getattr(transformers, f"{prefix}Config")
    model_class = getattr(transformers, f"{prefix}ForObjectDetection")
    tokenizer = _bert_tokenizer()
    swin = SwinConfig(window_size=4, embed_dim=8, depths=[1, 1, 1], num_heads=[1, 1, 1], image_size=64,
                      out_indices=[2, 3])
    text = {"model_type": "bert", "vocab_size": len(tokenizer), "hidden_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}
    config = config_class(d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2,
                          decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=10,
                          num_feature_levels=3, encoder_n_points=2, decoder_n_points=2, max_text_len=32,
                          use_timm_backbone=False, backbone_config=swin, text_config=text)
    model = model_class(config).eval()
    image_processor = GroundingDinoImageProcessorPil(size={"shortest_edge": 48, "longest_edge": 80})
    return _save(model, GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer), path)
