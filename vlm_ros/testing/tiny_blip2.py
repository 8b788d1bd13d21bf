"""Tiny random-weight BLIP-2 and InstructBLIP checkpoints (ViT 1x32, Q-Former 1x32 with 4 queries, d=32 LMs).

`language` picks the language model as in the released checkpoints: "opt" (blip2-opt-*), "llama"
(instructblip-vicuna-*, a Llama model) or "t5" (blip2-flan-t5-*, instructblip-flan-t5-*).
"""

from __future__ import annotations

from pathlib import Path

from vlm_ros.testing.tiny import build_tokenizer, seeded

IMAGE_SIZE = 32
NUM_QUERY_TOKENS = 4
QA_WORDS = "short description photo".split()


def _tokenizer(language: str):
    """Word-level tokenizer with the released tokenizers' special-token habits (BOS first for OPT/Llama, EOS
    last for T5). `<image>` is an added special token but not a *named* one, as in the released tokenizers
    (Blip2Processor/InstructBlipProcessor then use it as an AddedToken)."""
    from tokenizers import processors

    tokenizer = build_tokenizer(["<image>"], extra_words=QA_WORDS)
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    if language == "t5":
        template = processors.TemplateProcessing(single=f"$A {eos}", special_tokens=[(eos, tokenizer.eos_token_id)])
    else:
        template = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tokenizer.bos_token_id)])
    tokenizer.backend_tokenizer.post_processor = template
    return tokenizer


def _text_config(language: str, tokenizer):
    from transformers import LlamaConfig, OPTConfig, T5Config

    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    if language == "opt":
        return OPTConfig(vocab_size=len(tokenizer), hidden_size=32, ffn_dim=64, num_hidden_layers=1,
                         num_attention_heads=2, word_embed_proj_dim=32, max_position_embeddings=128, **ids)
    if language == "llama":
        return LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128, **ids)
    if language == "t5":
        return T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=1, num_decoder_layers=1,
                        num_heads=2, decoder_start_token_id=tokenizer.pad_token_id, **ids)
    raise ValueError(f"language must be 'opt', 'llama' or 't5', got {language!r}")


def _vision_qformer(qformer_vocab: int | None = None):
    from transformers import Blip2QFormerConfig, Blip2VisionConfig

    vision = Blip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               image_size=IMAGE_SIZE, patch_size=8)
    qformer = Blip2QFormerConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                 encoder_hidden_size=32, max_position_embeddings=64,
                                 **({"vocab_size": qformer_vocab} if qformer_vocab else {}))
    return vision, qformer


def _image_processor():
    from transformers import BlipImageProcessorPil

    return BlipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def _spread_text_weights(model, std: float | None) -> None:
    """Re-draw the language model's weight matrices with standard deviation `std` (None: keep transformers'
    init). A random OPT at the default 0.02 answers every prompt with one repeated token; a larger spread gives
    greedy answers that differ per prompt, which is what parity tests need to see."""
    import torch

    if std is None:
        return
    with torch.no_grad():
        for p in model.language_model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, std)


def build_tiny_blip2(path: str | Path, seed: int = 0, language: str = "opt", text_std: float | None = None) -> Path:
    """BLIP-2 (OPT or Flan-T5 style) saved with save_pretrained; loads with Blip2Adapter.from_pretrained.
    `text_std`: see _spread_text_weights."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor

    seeded(seed)
    tokenizer = _tokenizer(language)
    vision, qformer = _vision_qformer()
    config = Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(),
                         text_config=_text_config(language, tokenizer).to_dict(), num_query_tokens=NUM_QUERY_TOKENS,
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    model = Blip2ForConditionalGeneration(config).eval()
    _spread_text_weights(model, text_std)
    processor = Blip2Processor(image_processor=_image_processor(), tokenizer=tokenizer,
                               num_query_tokens=NUM_QUERY_TOKENS)
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def build_tiny_instructblip(path: str | Path, seed: int = 0, language: str = "llama",
                            text_std: float | None = None) -> Path:
    """InstructBLIP (Vicuna/Llama or Flan-T5 style) with its own Q-Former tokenizer, as released.
    `text_std`: see _spread_text_weights."""
    from tokenizers import processors
    from transformers import InstructBlipConfig, InstructBlipForConditionalGeneration, InstructBlipProcessor

    seeded(seed)
    tokenizer = _tokenizer(language)
    # the released Q-Former tokenizer is BERT's: [CLS] text [SEP]
    qformer_tokenizer = build_tokenizer(["[CLS]", "[SEP]"], extra_words=QA_WORDS)
    cls_id, sep_id = qformer_tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]"])
    qformer_tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    vision, qformer = _vision_qformer(qformer_vocab=len(qformer_tokenizer))
    config = InstructBlipConfig(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(),
                                text_config=_text_config(language, tokenizer).to_dict(),
                                num_query_tokens=NUM_QUERY_TOKENS,
                                image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    model = InstructBlipForConditionalGeneration(config).eval()
    _spread_text_weights(model, text_std)
    processor = InstructBlipProcessor(image_processor=_image_processor(), tokenizer=tokenizer,
                                      qformer_tokenizer=qformer_tokenizer, num_query_tokens=NUM_QUERY_TOKENS)
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
