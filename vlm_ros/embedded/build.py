"""The embedded model built from config objects (training and tests; the runtime loads saved weights: model.py).

Token scheme (word-level, `tokenizers` library): text is lower-cased, spaces become "▁" prefixes on the
following word (Metaspace), and `<loc_N>`, `,`, `?`, `.`, `:` split off as tokens of their own. So
"red ball<loc_3><loc_4><loc_9><loc_12>, blue cube" decodes back to exactly that string.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vlm_ros.embedded.model import EmbeddedConfig
from vlm_ros.embedded.prompt import BOS, EOS, IMAGE, LOC_BINS, PAD, SPECIAL_TOKENS, UNK
from vlm_ros.embedded.tasks import vocabulary_words

SPLIT_PATTERN = r"<loc_\d+>|[,?.:]"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{% if message['content'] is string %}<image>{{ message['content'] | trim }}"
    "{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>{% endif %}{% endfor %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] | trim }}{% endif %}{% endfor %}"
    "{% endif %}"
    "{{ ' answer:' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% if message['content'] is string %} {{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}{% if c['type'] == 'text' %} {{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}</s>"
    "{% endif %}"
    "{% endfor %}"
)


def vocabulary(loc_bins: int = LOC_BINS) -> list[str]:
    """Token strings in id order: specials, location tokens, punctuation, then "▁word" for every word."""
    words = vocabulary_words()
    punct = [w for w in words if not w.isalnum()]
    extra_punct = [":"]
    toks = list(SPECIAL_TOKENS) + [f"<loc_{i}>" for i in range(loc_bins)] + ["▁"]
    toks += sorted(set(punct + extra_punct))
    toks += ["▁" + w for w in words if w.isalnum()] + ["▁answer"]
    seen: set[str] = set()
    return [t for t in toks if not (t in seen or seen.add(t))]


def build_tokenizer(loc_bins: int = LOC_BINS):
    """A PreTrainedTokenizerFast over the closed vocabulary of tasks.py."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(vocabulary(loc_bins))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.Split(Regex("▁+$"), behavior="removed"),  # a lone "▁" before punctuation
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        extra_special_tokens={"image_token": IMAGE},
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )
    fast.add_special_tokens({"additional_special_tokens": [IMAGE]})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_image_processor(image_size: int):
    try:  # transformers >= 5.x without torchvision: the PIL backend
        from transformers import CLIPImageProcessorPil as Cls
    except ImportError:  # older transformers
        from transformers import CLIPImageProcessor as Cls

    return Cls(
        size={"height": image_size, "width": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=False,
    )


def preprocess_images(images: list[np.ndarray], image_size: int) -> np.ndarray:
    """(N, 3, S, S) float32 pixel values exactly as the processor makes them (PIL bicubic, CLIP mean/std).

    Used to pre-render training data without going through the processor object per image.
    """
    from PIL import Image

    mean = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
    std = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
    out = np.empty((len(images), 3, image_size, image_size), np.float32)
    for i, im in enumerate(images):
        r = np.asarray(Image.fromarray(im).resize((image_size, image_size), Image.BICUBIC), np.float32)
        out[i] = ((r * np.float32(1 / 255.0) - mean) / std).transpose(2, 0, 1)
    return out


def build_model(config: EmbeddedConfig | None = None):
    """(LlavaForConditionalGeneration with random weights, LlavaProcessor) for `config`."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    config = config or EmbeddedConfig()
    tokenizer = build_tokenizer(config.loc_bins)
    vocab_size = len(tokenizer)
    vocab_padded = (vocab_size + 63) // 64 * 64
    vision = CLIPVisionConfig(
        hidden_size=config.vision_hidden,
        intermediate_size=4 * config.vision_hidden,
        num_hidden_layers=config.vision_layers,
        num_attention_heads=config.vision_heads,
        image_size=config.image_size,
        patch_size=config.patch_size,
        projection_dim=config.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=vocab_padded,
        hidden_size=config.text_hidden,
        intermediate_size=4 * config.text_hidden,
        num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads,
        num_key_value_heads=config.text_heads,
        max_position_embeddings=config.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    llava = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        image_seq_length=config.num_image_tokens,
        vision_feature_select_strategy="default",
        vision_feature_layer=config.vision_feature_layer,
        projector_hidden_act="gelu",
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlavaForConditionalGeneration(llava)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.do_sample = False
    processor = LlavaProcessor(
        image_processor=build_image_processor(config.image_size),
        tokenizer=tokenizer,
        patch_size=config.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=CHAT_TEMPLATE,
    )
    return model, processor


def save(model, processor, path: str | Path, config: EmbeddedConfig, extra: dict | None = None) -> None:
    """save_pretrained of both, plus embedded_config.json (the EmbeddedConfig and any training facts)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    (path / "embedded_config.json").write_text(json.dumps({"config": config.to_dict(), **(extra or {})}, indent=2))
