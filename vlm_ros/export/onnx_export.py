"""ONNX export of a VLM as three graphs: vision (+ projector / connector), prefill, one decode step.

The decoder graphs are not traced through transformers' forward (cache objects, mask builders): a small
wrapper runs the model's own modules in the model's order (the same math as engine/lean_decoder.py), with
the KV cache as explicit per-layer inputs and outputs, so that onnxruntime and TensorRT see plain tensors.
The vision graph is the adapter's own `encode_vision` on the pixel input (InstructBLIP: the model's own
get_image_features with the instruction). Exports are float32; TensorRT lowers precision at build time (FP16
by default).

Supported families and their differences (each a small hook here; one decoder-only wrapper, one encoder-decoder):
- `embedded`, `llava`: LLaVA-style models whose decoder the lean decoder supports (Llama / Qwen2 / Mistral
  layers, default, llama3 or linear rope).
- `idefics3` (SmolVLM / SmolVLM2): the vision graph takes the processor's tiles (1, T, C, H, W) and runs SigLIP
  + pixel-shuffle connector; the tile count T depends on the frame size, so the export is for one frame size.
  The graph takes every tile as unpadded (one image per query: the processor's pixel_attention_mask is all ones).
- `qwen2_5_vl`: the vision graph takes the flattened patches of one fixed grid (the grid and its window
  indices are constants of the export, so again one frame size); the prefill takes the model's own 3-D rope
  positions (computed in torch by graph_engine.mrope_positions) and the decode step `rope_delta`
  (position = P + delta).
- `paligemma` (Gemma decoder): prefix-LM, so the prefill attends bidirectionally over image + prompt;
  Gemma's scaled embeddings, (1 + w) RMSNorm and gelu-tanh MLP are the model's own modules.
- `blip2`, `instructblip` with a decoder-only language model (OPT, or Llama / Vicuna): the vision graph is the
  vision tower + Q-Former + language projection, whose query tokens replace the image tokens the processor
  puts at the start of input_ids (as the model's own forward does); InstructBLIP's Q-Former also reads the
  instruction, so its vision graph takes qformer_input_ids / qformer_attention_mask (dynamic length) too.
  The Llama decoder is the wrapper above; OPT layers (learned positions with OPT's offset, LayerNorm before or
  after each block, ReLU fc1 / fc2, biases, no rotary) are a second form of the same wrapper.
- Encoder-decoders (`_Seq2Seq`): `florence2` (DaViT + projection as the vision graph; BART encoder-decoder) and
  `blip2` / `instructblip` with Flan-T5. The prefill graph merges the image features into the prompt, runs the
  model's own encoder, computes each decoder layer's cross-attention K / V once and runs the first decoder step
  from the decoder start token: -> logits, self KV (one token), cross KV. The decode step takes the token, the
  self KV and the cross KV (which the runner passes along unchanged). BART decoder layers are post-LN with
  learned positions; T5's are pre-LN with the first block's relative position bias.
Other families raise `UnsupportedModelError` with the reason (`REFUSED`, and `_decoder_problem` for decoders
a family's checkpoint may have): PaliGemma 2's Gemma 2 decoder (soft-capping, sliding-window layers) is refused.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vlm_ros.engine import names
from vlm_ros.engine.graph_engine import GraphShapes
from vlm_ros.engine.lean_decoder import LeanDecoder, language_model
from vlm_ros.export import DEFAULT_IMAGE_SIZE
from vlm_ros.models.registry import ADAPTERS

OPSET = 17
EXPORT_VERSION = 2  # bump when the graphs' structure or names change: it is part of the cache key
# Families whose pixel input (tile count, patch grid) depends on the frame size: exported for one frame size.
FRAME_SIZED_FAMILIES = ("idefics3", "qwen2_5_vl")
CONSTANT_VISION_POSITION_FAMILIES = ("idefics3",)  # see _constant_vision_positions
QFORMER_TEXT_FAMILIES = ("instructblip",)  # the vision graph's Q-Former also reads the instruction
PREFIX_LM_FAMILIES = ("paligemma",)  # the prefill attends bidirectionally over image + prompt
REFUSED: dict[str, str] = {  # family -> why it has no export
    "qwen3_vl": "its Qwen3 decoder (q/k norms, interleaved M-RoPE) adds the vision tower's DeepStack features into "
                "the hidden states of its first layers, which the exported decoder graphs do not take as inputs",
}
EXPORTABLE_FAMILIES = tuple(family for family in ADAPTERS if family not in REFUSED)
_GEMMA_LAYERS = {"GemmaDecoderLayer"}  # same layer structure as Llama; scaled embeddings inside embed_tokens


class UnsupportedModelError(ValueError):
    """The model (family or decoder) has no ONNX export here; the message says why."""


@dataclass
class ExportResult:
    directory: Path
    shapes: GraphShapes
    seconds: float


def check_exportable(adapter) -> None:
    """Raise UnsupportedModelError unless `adapter`'s model can be exported by this module."""
    if adapter.family not in EXPORTABLE_FAMILIES:
        reason = f": {REFUSED[adapter.family]}" if adapter.family in REFUSED else ""
        raise UnsupportedModelError(
            f"ONNX export supports the families {', '.join(EXPORTABLE_FAMILIES)}; '{adapter.family}' is not "
            f"supported{reason} (use backend torch)")
    problem = _decoder_problem(adapter.model)
    if problem:
        raise UnsupportedModelError(f"the decoder of this {adapter.family} model is not exportable: {problem}")


def _text_model(model):
    """The module holding the decoder stack and the lm_head: the VLM itself (LLaVA-style: `model.language_model`
    and `lm_head` on the outer model), or BLIP-2 / InstructBLIP's `language_model` (a *ForCausalLM)."""
    inner = getattr(model, "language_model", None)
    if getattr(model, "lm_head", None) is None and getattr(inner, "lm_head", None) is not None:
        return inner
    return model


def _decoder_stack(model):
    """(decoder stack with `layers` and `embed_tokens`, lm_head, kind): kind "rotary" (Llama-style layers) or
    "opt" (OPT: learned positions, LayerNorm, fc1/fc2); (None, None, "") when neither is found."""
    text = _text_model(model)
    head = getattr(text, "lm_head", None)
    decoder = getattr(getattr(text, "model", None), "decoder", None)  # OPTForCausalLM.model.decoder
    if decoder is not None and head is not None and hasattr(decoder, "embed_positions") and hasattr(decoder, "layers"):
        return decoder, head, "opt"
    lm = language_model(text)
    if lm is None or head is None or not hasattr(lm, "rotary_emb"):
        return None, None, ""
    return lm, head, "rotary"


def _seq2seq_parts(model):
    """(encoder, decoder, lm_head, kind) of an encoder-decoder language model: kind "bart" (Florence-2's BART)
    or "t5" (BLIP-2 / InstructBLIP's Flan-T5); None for a decoder-only model."""
    inner = getattr(model, "model", None)
    lm = getattr(inner, "language_model", None)  # Florence-2: model.model.language_model is a BartModel
    if lm is not None and hasattr(lm, "encoder") and hasattr(lm, "decoder") and hasattr(model, "lm_head"):
        return lm.encoder, lm.decoder, model.lm_head, "bart"
    lm = getattr(model, "language_model", None)  # BLIP-2 / InstructBLIP: a T5ForConditionalGeneration
    if lm is not None and hasattr(lm, "encoder") and hasattr(lm, "decoder") and hasattr(lm, "lm_head"):
        return lm.encoder, lm.decoder, lm.lm_head, "t5"
    return None


def _seq2seq_problem(model) -> str:
    parts = _seq2seq_parts(model)
    if parts is None:
        return "no BART or T5 encoder-decoder with an lm_head found"
    decoder, kind = parts[1], parts[3]
    kinds = sorted({type(layer).__name__ for layer in getattr(decoder, "layers", getattr(decoder, "block", []))})
    want = {"bart": ["BartDecoderLayer"], "t5": ["T5Block"]}[kind]
    return "" if kinds == want else f"decoder layers {', '.join(kinds)}"


def _decoder_problem(model) -> str:
    """Why the exported decoder wrapper cannot run this model's language model, or ''."""
    if getattr(_text_model(model).config, "is_encoder_decoder", False) or \
            getattr(model.config, "is_encoder_decoder", False):
        return _seq2seq_problem(model)
    lm, _, kind = _decoder_stack(model)
    if lm is None:
        return "no rotary or OPT decoder with an lm_head found"
    kinds = sorted({type(layer).__name__ for layer in lm.layers})
    if kind == "opt":
        return "" if kinds == ["OPTDecoderLayer"] else f"layers {', '.join(kinds)} in an OPT decoder"
    if LeanDecoder.supports(_text_model(model)):
        return ""
    rope = (getattr(lm.config, "rope_parameters", None) or {}).get("rope_type", "default")
    if set(kinds) <= _GEMMA_LAYERS and rope == "default":
        return ""
    if "Gemma2DecoderLayer" in kinds:
        return "Gemma 2 layers (attention logit soft-capping, sliding-window layers, extra norms)"
    return f"layers {', '.join(kinds)} with rope {rope!r}"


def reference_inputs(adapter, image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE):
    """The adapter's inputs for a blank frame of `image_size` (H, W): the shapes the graphs are traced for."""
    from vlm_ros.core.types import Frame, Request, Task

    h, w = image_size
    return adapter.prepare(Frame(np.zeros((h, w, 3), dtype=np.uint8)), Request(Task.DESCRIBE))


def _vision_constants(adapter, tensors: dict) -> dict:
    """The vision inputs besides pixel_values (Qwen's grid, Idefics3's pixel mask): constants of the export."""
    return {k: v for k, v in tensors.items()
            if k != "pixel_values" and (k in adapter.vision_input_names or k.startswith("image_"))}


def graph_shapes(adapter, image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE) -> GraphShapes:
    model = adapter.model
    seq2seq = _Seq2Seq(model) if _seq2seq_parts(model) is not None else None
    if seq2seq is not None:
        lm, head = seq2seq.decoder, seq2seq.lm_head
    else:
        lm, head, _ = _decoder_stack(model)
    tensors = reference_inputs(adapter, image_size).tensors
    pixels = tensors["pixel_values"]
    text = _qformer_text_inputs(adapter, tensors)
    with torch.inference_mode():
        features = _Vision(adapter, _vision_constants(adapter, tensors))(pixels, *text)
    grid = tuple(int(v) for v in tensors["image_grid_thw"][0]) if "image_grid_thw" in tensors else ()
    qformer = getattr(model.config, "qformer_config", None)
    if seq2seq is not None:
        layers, kv_heads, head_dim = len(seq2seq.layers), seq2seq.n_heads, seq2seq.head_dim
    else:
        layers, head_dim = len(lm.layers), lm.layers[0].self_attn.head_dim
        kv_heads = getattr(lm.config, "num_key_value_heads", None) or lm.config.num_attention_heads
    return GraphShapes(pixel_shape=tuple(pixels.shape), image_tokens=int(features.shape[0]),
                       embed_dim=int(features.shape[1]), layers=layers, kv_heads=int(kv_heads), head_dim=int(head_dim),
                       vocab=int(head.out_features), image_token_id=int(model.config.image_token_id),
                       encoder_decoder=seq2seq is not None,
                       image_grid=grid, mrope=bool(getattr(getattr(lm, "rotary_emb", None), "mrope_section", None)),
                       image_size=tuple(image_size) if adapter.family in FRAME_SIZED_FAMILIES else (),
                       qformer_text_max=int(qformer.max_position_embeddings) if text else 0)


def _qformer_text_inputs(adapter, tensors: dict) -> tuple:
    """InstructBLIP: (qformer_input_ids, qformer_attention_mask) of a query, the vision graph's text inputs; ()
    for every other family."""
    if adapter.family not in QFORMER_TEXT_FAMILIES:
        return ()
    ids = tensors["qformer_input_ids"]
    return ids, tensors.get("qformer_attention_mask", torch.ones_like(ids))


class _Vision(torch.nn.Module):
    """pixel_values [, qformer_input_ids, qformer_attention_mask] -> image_features (N, E): the adapter's own
    vision path (vision tower and projector; BLIP-2 / InstructBLIP: vision tower, Q-Former, language projection).

    `constants`: the other vision inputs of the reference frame (Qwen's grid, Idefics3's pixel mask), fixed.
    InstructBLIP's Q-Former also reads the instruction: its tokens are inputs of the graph (dynamic length).
    """

    def __init__(self, adapter, constants: dict):
        super().__init__()
        self.model = adapter.model  # a submodule, so that the tracer sees its parameters as the graph's weights
        self.adapter, self.constants = adapter, constants

    def forward(self, pixel_values, qformer_input_ids=None, qformer_attention_mask=None):
        from vlm_ros.models.base import ModelInputs

        if qformer_input_ids is not None:  # the model's own get_image_features with the instruction
            pooled = self.model.get_image_features(pixel_values=pixel_values, qformer_input_ids=qformer_input_ids,
                                                   qformer_attention_mask=qformer_attention_mask,
                                                   return_dict=True).pooler_output
        else:
            inputs = ModelInputs({**self.constants, "pixel_values": pixel_values}, transform=None)
            pooled = self.adapter.encode_vision(inputs)["image"].pooler_output
        return torch.cat([f.reshape(-1, f.shape[-1]) for f in pooled], dim=0)  # (N, E)


@contextlib.contextmanager
def _constant_vision_positions(adapter, constants: dict, pixel_values):
    """Idefics3's vision embeddings derive patch position ids from the pixel mask with `bucketize`, which the
    exporter writes with a wrong (float) type. The mask is a constant of the export (all tiles unpadded), so the
    ids are too: record them once from an eager run and feed that constant to the position embedding while
    tracing (the unused bucketize nodes are dropped from the graph)."""
    embeddings = [m for name, m in adapter.model.named_modules() if name.endswith("embeddings.position_embedding")]
    if adapter.family not in CONSTANT_VISION_POSITION_FAMILIES or len(embeddings) != 1:
        yield
        return
    recorded = []
    hook = embeddings[0].register_forward_pre_hook(lambda module, args: recorded.append(args[0].clone()))
    try:
        _Vision(adapter, constants)(pixel_values)
    finally:
        hook.remove()
    hook = embeddings[0].register_forward_pre_hook(lambda module, args: (recorded[0],))
    try:
        yield
    finally:
        hook.remove()


class _Decoder(torch.nn.Module):
    """The language model with explicit KV tensors; `forward` is the prefill, `step` one decode step.

    Family hooks: `mrope_section` (Qwen2.5-VL: prefill positions are (3, S), one row per frequency section),
    `prefix_lm` (PaliGemma: the prefill is not causal) and the OPT layers of BLIP-2 (`kind` "opt": learned
    positions, LayerNorm before or after each block, fc1 / fc2, no rotary). Everything else is the model's own
    modules.
    """

    def __init__(self, model, prefix_lm: bool = False):
        super().__init__()
        lm, head, kind = _decoder_stack(model)
        self.lm, self.lm_head, self.layers, self.kind = lm, head, lm.layers, kind
        attn = lm.layers[0].self_attn
        self.n_heads, self.head_dim = lm.config.num_attention_heads, attn.head_dim
        self.n_kv = getattr(lm.config, "num_key_value_heads", None) or self.n_heads
        self.scale = attn.scaling
        rotary = getattr(lm, "rotary_emb", None)
        self.inv_freq = rotary.inv_freq if rotary is not None else None  # already adjusted for llama3 / linear
        self.rope_scale = float(getattr(rotary, "attention_scaling", 1.0))
        self.mrope_section = tuple(getattr(rotary, "mrope_section", None) or ())
        self.prefix_lm = prefix_lm
        self.image_token_id = int(model.config.image_token_id)

    def _rope(self, positions):
        """positions (T,), or (3, T) per (temporal, height, width) section -> cos, sin (T, D)."""
        freqs = positions.to(torch.float32)[..., None] * self.inv_freq.to(torch.float32)  # (T, D/2) or (3, T, D/2)
        if positions.dim() == 2:  # frequency chunk i takes its positions from row i % 3 (the model's layout)
            chunks = freqs.split(list(self.mrope_section), dim=-1)
            freqs = torch.cat([chunk[i % 3] for i, chunk in enumerate(chunks)], dim=-1)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos() * self.rope_scale, emb.sin() * self.rope_scale

    @staticmethod
    def _rotate(x, cos, sin):
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    def _run(self, x, past, positions):
        """x (1, T, H) token embeddings at `positions` (T,) (or (3, T)); past: per layer (k, v) (1, KVH, P, D) or
        None (the prefill) -> logits (1, V), presents."""
        if self.kind == "opt":
            return self._run_opt(x, past, positions)
        cos, sin = self._rope(positions)
        t = x.shape[1]
        causal = past is None and not self.prefix_lm  # a decode step attends to every cached position
        presents = []
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(1, t, self.n_heads, self.head_dim).transpose(1, 2)  # (1, NH, T, D)
            k = attn.k_proj(h).view(1, t, self.n_kv, self.head_dim).transpose(1, 2)  # (1, KVH, T, D)
            v = attn.v_proj(h).view(1, t, self.n_kv, self.head_dim).transpose(1, 2)
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
            if past is not None:
                k = torch.cat((past[2 * i], k), dim=2)  # (1, KVH, P + T, D)
                v = torch.cat((past[2 * i + 1], v), dim=2)
            presents += [k, v]
            if self.n_kv != self.n_heads:
                k = k.repeat_interleave(self.n_heads // self.n_kv, dim=1)
                v = v.repeat_interleave(self.n_heads // self.n_kv, dim=1)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=self.scale)  # (1, NH, T, D)
            x = x + attn.o_proj(o.transpose(1, 2).reshape(1, t, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        logits = self.lm_head(self.lm.norm(x[:, -1:]))[:, 0]  # (1, V)
        return (logits.float(), *presents)

    def _run_opt(self, x, past, positions):
        """OPT (BLIP-2's OPT checkpoints), in OPTDecoder's order: project_in, + learned positions (the embedding
        adds OPT's offset of 2 itself), layers with LayerNorm before (or after, `do_layer_norm_before` False) the
        attention and the fc1 / activation / fc2 block, the final LayerNorm, project_out."""
        lm, t = self.lm, x.shape[1]
        if lm.project_in is not None:
            x = lm.project_in(x)
        x = x + lm.embed_positions(None, 0, position_ids=positions[None])
        causal = past is None
        presents = []
        for i, layer in enumerate(self.layers):
            attn, before = layer.self_attn, layer.do_layer_norm_before
            h = layer.self_attn_layer_norm(x) if before else x
            q = (attn.q_proj(h) * attn.scaling).view(1, t, self.n_heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(h).view(1, t, self.n_kv, self.head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(1, t, self.n_kv, self.head_dim).transpose(1, 2)
            if past is not None:
                k = torch.cat((past[2 * i], k), dim=2)
                v = torch.cat((past[2 * i + 1], v), dim=2)
            presents += [k, v]
            o = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=1.0)  # q is scaled (OPT's order)
            x = x + attn.out_proj(o.transpose(1, 2).reshape(1, t, -1))
            if not before:
                x = layer.self_attn_layer_norm(x)
            h = layer.final_layer_norm(x) if before else x
            x = x + layer.fc2(layer.activation_fn(layer.fc1(h)))
            if not before:
                x = layer.final_layer_norm(x)
        x = x[:, -1:]
        if lm.final_layer_norm is not None:
            x = lm.final_layer_norm(x)
        if lm.project_out is not None:
            x = lm.project_out(x)
        return (self.lm_head(x)[:, 0].float(), *presents)

    def forward(self, input_ids, image_features, position_ids=None):
        """Prefill: input_ids (1, S), image_features (N, E) [, position_ids (3, S)] -> logits (1, V), presents."""
        embeds = self.lm.embed_tokens(input_ids)  # (1, S, E) (Gemma's embedding scales itself)
        is_image = input_ids[0] == self.image_token_id  # (S,)
        index = (torch.cumsum(is_image.to(torch.int64), dim=0) - 1).clamp(min=0)  # k-th image token -> row k
        merged = torch.where(is_image[None, :, None], image_features[index][None], embeds)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device) if position_ids is None else position_ids
        return self._run(merged, None, positions)


class _DecodeStep(torch.nn.Module):
    def __init__(self, decoder: _Decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, input_ids, *state):
        """input_ids (1, 1) [, rope_delta (1,)], past (1, KVH, P, D) x 2L -> logits (1, V), presents (P + 1) x 2L."""
        past = state[1:] if self.decoder.mrope_section else state
        position = torch.arange(1, device=input_ids.device) + past[0].shape[2]  # (1,): P
        if self.decoder.mrope_section:  # text after the image: the three rows are equal, P + delta
            position = position + state[0]
        x = self.decoder.lm.embed_tokens(input_ids)  # (1, 1, E)
        return self.decoder._run(x, past, position)


class _Seq2Seq(torch.nn.Module):
    """An encoder-decoder language model (Florence-2's BART, BLIP-2's Flan-T5) with explicit KV tensors.

    `forward` is the prefill: the image features replace the image tokens in the prompt's embeddings (the
    model's own input embedding), the model's own encoder runs over them, each decoder layer's cross-attention
    K / V are computed once from the encoder output, and the first decoder step runs from the decoder start
    token. `step` is one decoder step on the self-attention cache and the (unchanged) cross K / V. The decoder
    layers are run module by module in the model's order: BART post-LN (learned positions with BART's offset,
    LayerNorm after each residual), T5 pre-LN (RMS norm, relative position bias of the first block's
    self-attention shared by every layer, unscaled scores, output scaling before a tied lm_head).
    """

    def __init__(self, model):
        super().__init__()
        self.encoder, self.decoder, self.lm_head, self.kind = _seq2seq_parts(model)
        self.embed = model.get_input_embeddings()  # the embedding the model's own forward merges the image into
        self.image_token_id = int(model.config.image_token_id)
        text = model.config.get_text_config()
        generation = getattr(getattr(model, "language_model", None), "generation_config", None) \
            if self.kind == "t5" else model.generation_config
        start = getattr(generation, "decoder_start_token_id", None)
        self.start_token_id = int(text.decoder_start_token_id if start is None else start)
        if self.kind == "bart":
            self.layers = self.decoder.layers
            attn = self.layers[0].self_attn
            self.n_heads, self.head_dim = attn.num_heads, attn.head_dim
        else:
            self.layers = self.decoder.block
            attn = self.layers[0].layer[0].SelfAttention
            self.n_heads, self.head_dim = attn.n_heads, attn.key_value_proj_dim
            self.output_scale = float(text.d_model) ** -0.5 if getattr(text, "scale_decoder_outputs", False) else 1.0

    def _heads(self, x):
        """(1, T, H * D) -> (1, H, T, D)."""
        return x.view(1, x.shape[1], self.n_heads, self.head_dim).transpose(1, 2)

    def _cross(self, layer):
        return layer.encoder_attn if self.kind == "bart" else layer.layer[1].EncDecAttention

    def forward(self, input_ids, image_features):
        """Prefill: input_ids (1, S), image_features (N, E) -> logits (1, V), self KV (1, H, 1, D) x 2L, cross KV
        (1, H, S, D) x 2L."""
        embeds = self.embed(input_ids)
        is_image = input_ids[0] == self.image_token_id
        index = (torch.cumsum(is_image.to(torch.int64), dim=0) - 1).clamp(min=0)
        merged = torch.where(is_image[None, :, None], image_features[index][None], embeds)
        encoded = self.encoder(inputs_embeds=merged, return_dict=True).last_hidden_state  # (1, S, E)
        cross = []
        for layer in self.layers:
            attn = self._cross(layer)
            k_proj, v_proj = (attn.k_proj, attn.v_proj) if self.kind == "bart" else (attn.k, attn.v)
            cross += [self._heads(k_proj(encoded)), self._heads(v_proj(encoded))]
        start = torch.full((1, 1), self.start_token_id, dtype=torch.long, device=input_ids.device)
        logits, *presents = self.run(start, None, cross)
        return (logits, *presents, *cross)

    def run(self, input_ids, past, cross):
        """One decoder token input_ids (1, 1) at position P (the past's length; 0 without past) -> logits (1, V),
        self KV (1, H, P + 1, D) x 2L."""
        position = torch.arange(1, device=input_ids.device) + (past[0].shape[2] if past is not None else 0)
        if self.kind == "bart":
            return self._run_bart(input_ids, past, cross, position)
        return self._run_t5(input_ids, past, cross, position)

    def _attend(self, q, k, v, scale, bias=None):
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)  # one query: no causal mask
        return o.transpose(1, 2).reshape(1, q.shape[2], -1)

    def _run_bart(self, input_ids, past, cross, position):
        dec = self.decoder
        x = dec.embed_tokens(input_ids) + dec.embed_positions(input_ids, 0, position_ids=position)
        x = dec.layernorm_embedding(x)
        presents = []
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            k, v = self._heads(attn.k_proj(x)), self._heads(attn.v_proj(x))
            if past is not None:
                k, v = torch.cat((past[2 * i], k), dim=2), torch.cat((past[2 * i + 1], v), dim=2)
            presents += [k, v]
            x = layer.self_attn_layer_norm(x + attn.out_proj(self._attend(self._heads(attn.q_proj(x)), k, v,
                                                                            attn.scaling)))
            ca = layer.encoder_attn
            o = self._attend(self._heads(ca.q_proj(x)), cross[2 * i], cross[2 * i + 1], ca.scaling)
            x = layer.encoder_attn_layer_norm(x + ca.out_proj(o))
            x = layer.final_layer_norm(x + layer.fc2(layer.activation_fn(layer.fc1(x))))
        return (self.lm_head(x)[:, 0].float(), *presents)

    def _run_t5(self, input_ids, past, cross, position):
        dec = self.decoder
        x = dec.embed_tokens(input_ids)
        first = self.layers[0].layer[0].SelfAttention
        keys = torch.arange(position[0] + 1, device=input_ids.device)  # the cache and this token: 0 .. P
        buckets = first._relative_position_bucket(keys - position[:, None], bidirectional=False,
                                                  num_buckets=first.relative_attention_num_buckets,
                                                  max_distance=first.relative_attention_max_distance)
        bias = first.relative_attention_bias(buckets).permute(2, 0, 1)[None]  # (1, H, 1, P + 1)
        presents = []
        for i, block in enumerate(self.layers):
            self_layer, cross_layer, ff = block.layer
            attn = self_layer.SelfAttention
            h = self_layer.layer_norm(x)
            k, v = self._heads(attn.k(h)), self._heads(attn.v(h))
            if past is not None:
                k, v = torch.cat((past[2 * i], k), dim=2), torch.cat((past[2 * i + 1], v), dim=2)
            presents += [k, v]
            x = x + attn.o(self._attend(self._heads(attn.q(h)), k, v, 1.0, bias))
            ca = cross_layer.EncDecAttention
            h = cross_layer.layer_norm(x)
            x = x + ca.o(self._attend(self._heads(ca.q(h)), cross[2 * i], cross[2 * i + 1], 1.0))
            x = x + ff.DenseReluDense(ff.layer_norm(x))
        x = dec.final_layer_norm(x) * self.output_scale
        return (self.lm_head(x)[:, 0].float(), *presents)


class _Seq2SeqStep(torch.nn.Module):
    def __init__(self, seq2seq: _Seq2Seq, layers: int):
        super().__init__()
        self.seq2seq, self.layers = seq2seq, layers

    def forward(self, input_ids, *state):
        """input_ids (1, 1), self KV (1, H, P, D) x 2L, cross KV (1, H, S, D) x 2L -> logits, self KV (P + 1)."""
        past, cross = state[: 2 * self.layers], state[2 * self.layers:]
        return self.seq2seq.run(input_ids, past, cross)


def export_model(adapter, directory: str | Path, log=print,
                 image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE) -> ExportResult:
    """Write vision.onnx, prefill.onnx and decode.onnx for `adapter`'s model into `directory` (float32, CPU).

    `image_size` (H, W): the frame size a frame-sized family (FRAME_SIZED_FAMILIES) is exported for.
    """
    check_exportable(adapter)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = adapter.model
    if adapter.device.type != "cpu" or next(model.parameters()).dtype != torch.float32:
        raise ValueError("export needs the model on the CPU in float32 (load it with device cpu, dtype float32)")
    t0 = time.monotonic()
    shapes = graph_shapes(adapter, image_size)
    reference = reference_inputs(adapter, image_size).tensors
    L, kvh, d, mrope, cross = shapes.layers, shapes.kv_heads, shapes.head_dim, shapes.mrope, shapes.encoder_decoder
    if cross:  # encoder-decoder: the prefill ends with the first decoder step, cross K / V join the state
        decoder = _Seq2Seq(model).eval()
        step = _Seq2SeqStep(decoder, L).eval()
    else:
        decoder = _Decoder(model, prefix_lm=adapter.family in PREFIX_LM_FAMILIES).eval()
        step = _DecodeStep(decoder).eval()
    n = shapes.image_tokens
    ids = torch.full((1, n + 5), 3, dtype=torch.long)
    ids[0, 1: 1 + n] = shapes.image_token_id
    features = torch.zeros(n, shapes.embed_dim)
    prefill_args = (ids, features, *([torch.arange(n + 5).expand(3, -1).contiguous()] if mrope else []))
    past = [torch.zeros(1, kvh, 7, d) for _ in range(2 * L)]
    cross_kv = [torch.zeros(1, kvh, n + 5, d) for _ in range(2 * L)] if cross else []
    decode_args = (torch.zeros(1, 1, dtype=torch.long), *([torch.zeros(1, dtype=torch.long)] if mrope else []), *past,
                   *cross_kv)
    s, p = names.SEQUENCE, names.PAST
    # the prefill's self KV covers the prompt (decoder-only) or the decoder start token (encoder-decoder)
    prefill_kv = {} if cross else {n: {2: s} for n in names.present_names(L)}
    text = _qformer_text_inputs(adapter, reference)
    jobs = [
        # every wrapper in eval mode: torch.onnx.export restores each module's mode after tracing, and a wrapper
        # left in training mode would leave the model in training mode too (dropout on: BLIP-2's Q-Former)
        (names.VISION_FILE, _Vision(adapter, _vision_constants(adapter, reference)).eval(),
         (reference["pixel_values"], *text),
         names.vision_inputs(bool(text)), [names.IMAGE_FEATURES],
         {name: {1: names.QFORMER_SEQUENCE} for name in names.vision_inputs(bool(text))[1:]}),
        (names.PREFILL_FILE, decoder, prefill_args, names.prefill_inputs(mrope), names.prefill_outputs(L, cross),
         {names.INPUT_IDS: {1: s}, **({names.POSITION_IDS: {1: s}} if mrope else {}), **prefill_kv,
          **{n: {2: s} for n in names.cross_names(L) if cross}}),
        (names.DECODE_FILE, step, decode_args, names.decode_inputs(L, mrope, cross),
         [names.LOGITS, *names.present_names(L)],
         {**{n: {2: p} for n in names.past_names(L)}, **{n: {2: f"{p}_plus_1"} for n in names.present_names(L)},
          **{n: {2: s} for n in names.cross_names(L) if cross}}),
    ]
    with torch.inference_mode(), warnings.catch_warnings(), \
            _constant_vision_positions(adapter, _vision_constants(adapter, reference), reference["pixel_values"]):
        # The vision tower's shape checks (and Qwen's grid / window indices) trace as constants: right here,
        # its input size is fixed.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        for file, module, args, inputs, outputs, dynamic in jobs:
            t = time.monotonic()
            torch.onnx.export(module, args, str(directory / file), input_names=inputs, output_names=outputs,
                              dynamic_axes=dynamic or None, opset_version=OPSET, dynamo=False,
                              do_constant_folding=True)
            log(f"exported {file} ({(directory / file).stat().st_size / 1e6:.1f} MB) in {time.monotonic() - t:.1f} s")
    return ExportResult(directory, shapes, time.monotonic() - t0)


def export_key(model_dir: str | Path, family: str, image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE) -> dict:
    """What an export depends on: the model's content, the family adapter, this exporter's version and opset,
    and for a frame-sized family the frame size."""
    from vlm_ros.export.manifest import model_hash

    key = {"model_sha256": model_hash(model_dir), "family": family, "export_version": EXPORT_VERSION, "opset": OPSET}
    if family in FRAME_SIZED_FAMILIES:
        key["image_size"] = list(image_size)
    return key


def ensure_export(adapter, model_dir: str | Path, root: Path, policy: str, log=print,
                  image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE) -> tuple[Path, GraphShapes]:
    """The export folder of `adapter`'s model under `root`, reused, built or refused per `policy` (manifest.py)."""
    from vlm_ros.export.manifest import ensure, folder_name

    check_exportable(adapter)
    directory = root / folder_name(model_dir, adapter.family, "onnx")

    def build(tmp: Path) -> dict:
        result = export_model(adapter, tmp, log, image_size)
        return {"shapes": result.shapes.to_dict(), "model_dir": str(Path(model_dir).resolve()),
                "torch": torch.__version__, "files": sorted(names.GRAPH_FILES.values())}

    manifest = ensure(directory, "onnx", export_key(model_dir, adapter.family, image_size), policy, build, log)
    return directory, GraphShapes.from_dict(manifest.info["shapes"])
