"""Tensor and file names of the exported graphs: defined once, used by the exporter and by every runtime.

Three graphs per model:
- vision:  pixel_values float32 in the family's own layout (LLaVA / PaliGemma / BLIP-2 (1, C, H, W), Idefics3
           tiles (1, T, C, H, W), Qwen2.5-VL flattened patches (L, C * 2 * 14 * 14)) [, qformer_input_ids and
           qformer_attention_mask (1, Q) int64: InstructBLIP only, the instruction its Q-Former reads]
           -> image_features (N, E) (BLIP-2 / InstructBLIP: the projected Q-Former query tokens)
- prefill: input_ids (1, S) int64, image_features (N, E) [, position_ids (3, S) int64: multimodal rope only]
           -> logits (1, V), present_key.i / present_value.i (1, KVH, S, D) for every layer i; the image features
           replace the image placeholder tokens inside the graph, so a runtime never needs the embedding table.
- decode:  input_ids (1, 1) int64 [, rope_delta (1,) int64: multimodal rope only], past_key.i / past_value.i
           (1, KVH, P, D) -> logits (1, V), present_*.i (1, KVH, P + 1, D); the new token's position is P
           (read from the past's shape), plus rope_delta where the model has one.
Encoder-decoder models (Florence-2's BART, BLIP-2 / InstructBLIP's Flan-T5, GraphShapes.encoder_decoder):
- prefill: the same inputs -> logits (1, V) of the first generated token (the encoder runs over the merged
           prompt, then one decoder step from the decoder start token), present_key.i / present_value.i
           (1, H, 1, D) of that step, cross_key.i / cross_value.i (1, H, S, D): each decoder layer's
           cross-attention K / V of the encoder output.
- decode:  input_ids (1, 1), past_key.i / past_value.i (1, H, P, D), cross_key.i / cross_value.i (1, H, S, D)
           -> logits (1, V), present_*.i (1, H, P + 1, D); the cross K / V are passed along unchanged.
`prefill_inputs` / `prefill_outputs` / `decode_inputs` give each graph's I/O in order; a runtime feeds exactly
those.
"""

from __future__ import annotations

VISION_FILE = "vision.onnx"
PREFILL_FILE = "prefill.onnx"
DECODE_FILE = "decode.onnx"
GRAPH_FILES = {"vision": VISION_FILE, "prefill": PREFILL_FILE, "decode": DECODE_FILE}
ENGINE_FILES = {graph: file.replace(".onnx", ".engine") for graph, file in GRAPH_FILES.items()}  # TensorRT
MANIFEST_FILE = "manifest.json"

PIXEL_VALUES = "pixel_values"
IMAGE_FEATURES = "image_features"
INPUT_IDS = "input_ids"
LOGITS = "logits"
POSITION_IDS = "position_ids"  # Qwen2.5-VL prefill: the model's 3-D (temporal, height, width) rope positions
ROPE_DELTA = "rope_delta"  # Qwen2.5-VL decode: rope position - cache position after the image
QFORMER_INPUT_IDS = "qformer_input_ids"  # InstructBLIP vision: the instruction in the Q-Former's vocabulary
QFORMER_ATTENTION_MASK = "qformer_attention_mask"

# Dynamic axis names (also the names TensorRT optimisation profiles are computed for).
SEQUENCE = "sequence"  # prefill prompt length S
PAST = "past_length"  # decode cache length P
QFORMER_SEQUENCE = "qformer_sequence"  # InstructBLIP: the instruction's Q-Former token count


def past_key(layer: int) -> str:
    return f"past_key.{layer}"


def past_value(layer: int) -> str:
    return f"past_value.{layer}"


def present_key(layer: int) -> str:
    return f"present_key.{layer}"


def present_value(layer: int) -> str:
    return f"present_value.{layer}"


def cross_key(layer: int) -> str:
    return f"cross_key.{layer}"


def cross_value(layer: int) -> str:
    return f"cross_value.{layer}"


def cross_names(layers: int) -> list[str]:
    """cross_key.0, cross_value.0, ... (encoder-decoder: the cross-attention K / V of the encoder output, made by
    the prefill and passed unchanged to every decode step)."""
    return [name for i in range(layers) for name in (cross_key(i), cross_value(i))]


def past_names(layers: int) -> list[str]:
    """past_key.0, past_value.0, past_key.1, ... (the decode graph's cache inputs, in order)."""
    return [name for i in range(layers) for name in (past_key(i), past_value(i))]


def present_names(layers: int) -> list[str]:
    """present_key.0, present_value.0, ... (the cache outputs of prefill and decode, in order)."""
    return [name for i in range(layers) for name in (present_key(i), present_value(i))]


def vision_inputs(qformer_text: bool) -> list[str]:
    """The vision graph's inputs, in order (`qformer_text`: InstructBLIP's Q-Former also reads the instruction)."""
    return [PIXEL_VALUES, *([QFORMER_INPUT_IDS, QFORMER_ATTENTION_MASK] if qformer_text else [])]


def prefill_inputs(mrope: bool) -> list[str]:
    """The prefill graph's inputs, in order (`mrope`: the model has multimodal 3-D rope)."""
    return [INPUT_IDS, IMAGE_FEATURES, *([POSITION_IDS] if mrope else [])]


def prefill_outputs(layers: int, encoder_decoder: bool = False) -> list[str]:
    """The prefill graph's outputs, in order (`encoder_decoder`: the cross K / V follow the self-attention cache)."""
    return [LOGITS, *present_names(layers), *(cross_names(layers) if encoder_decoder else [])]


def decode_inputs(layers: int, mrope: bool, encoder_decoder: bool = False) -> list[str]:
    """The decode graph's inputs, in order: the token, then the state a runtime carries from step to step."""
    return [INPUT_IDS, *([ROPE_DELTA] if mrope else []), *past_names(layers),
            *(cross_names(layers) if encoder_decoder else [])]
