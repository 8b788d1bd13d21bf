"""A model of the embedded family whose greedy answer is fixed by its weights: a grounding test fixture.

The random tiny models never emit boxes, so node tests of the 3-D path (depth + CameraInfo -> target
positions) need a model that does. This one is a real LlavaForConditionalGeneration with the embedded model's
configuration, tokenizer and processor, saved to disk and loaded by the node like any model directory. Its
weights are set by hand so that the decoder is a lookup table:

- token embeddings are one-hot (text hidden size = vocabulary size = 192);
- every decoder layer's attention output projection and MLP down projection are zero, so each position's
  residual stream stays its token's one-hot embedding (the image features and the rest of the prompt have no
  influence on what comes next);
- the LM head maps token t to the token that follows t in the script (any other token -> end of sequence).

So after the prompt's last token (`:` of " answer:") it writes the script, e.g.
`red ball<loc_10><loc_20><loc_40><loc_50>` then `</s>`, on every frame and for every instruction. Script tokens
must be distinct (the next token is a function of the current one only).
"""

from __future__ import annotations

import json
import shutil
from itertools import pairwise
from pathlib import Path

import torch

DEFAULT_SCRIPT = " red ball<loc_16><loc_12><loc_48><loc_52>"  # 64 bins: around the image centre


def build_scripted_embedded(path: str | Path, script: str = DEFAULT_SCRIPT) -> Path:
    """Save the scripted model (embedded family) to `path`; returns `path`."""
    from transformers import AutoProcessor, LlavaConfig, LlavaForConditionalGeneration

    from vlm_ros.embedded.model import DEFAULT_WEIGHTS_DIR
    from vlm_ros.embedded.prompt import ANSWER_MARKER

    source = Path(DEFAULT_WEIGHTS_DIR)
    processor = AutoProcessor.from_pretrained(source, local_files_only=True)
    tokenizer = processor.tokenizer
    config = LlavaConfig.from_pretrained(source, local_files_only=True)
    config.tie_word_embeddings = False
    config.text_config.tie_word_embeddings = False
    hidden, vocab = config.text_config.hidden_size, config.text_config.vocab_size
    if hidden < vocab:
        raise ValueError(f"one-hot embeddings need hidden size >= vocabulary ({hidden} < {vocab})")

    chain = tokenizer(ANSWER_MARKER + script, add_special_tokens=False)["input_ids"]  # (":" first)
    chain = chain[len(tokenizer(ANSWER_MARKER, add_special_tokens=False)["input_ids"]) - 1:] + [tokenizer.eos_token_id]
    if len(set(chain)) != len(chain):
        raise ValueError(f"script tokens must be distinct: {tokenizer.convert_ids_to_tokens(chain)}")

    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    language = model.model.language_model
    with torch.no_grad():
        embed = torch.zeros(vocab, hidden)  # (V, H)
        embed[:, :vocab] = torch.eye(vocab)
        language.embed_tokens.weight.copy_(embed)
        for layer in language.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        language.norm.weight.fill_(1.0)
        head = torch.zeros(vocab, hidden)  # (V, H): logits[v] = head[v] . onehot(t) * sqrt(H)
        head[tokenizer.eos_token_id, :vocab] = 0.5  # by default: end of sequence
        for current, following in pairwise(chain):
            head[:, current] = 0.0
            head[following, current] = 1.0
        model.lm_head.weight.copy_(head)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    shutil.copy(source / "embedded_config.json", path / "embedded_config.json")
    (path / "SCRIPTED.json").write_text(
        json.dumps({"script": script, "tokens": tokenizer.convert_ids_to_tokens(chain)}))
    return path
