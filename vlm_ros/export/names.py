"""Tensor and file names of the exported graphs: defined once, used by the exporter and by every runtime.

Three graphs per model (LLaVA family):
- vision:  pixel_values (1, C, H, W) float32            -> image_features (N, E)        (N image tokens)
- prefill: input_ids (1, S) int64, image_features (N, E) -> logits (1, V), present_key.i / present_value.i
           (1, KVH, S, D) for every layer i; the image features replace the image placeholder tokens inside
           the graph, so a runtime never needs the embedding table.
- decode:  input_ids (1, 1) int64, past_key.i / past_value.i (1, KVH, P, D) -> logits (1, V), present_*.i
           (1, KVH, P + 1, D); the new token's position is P (read from the past's shape).
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

# Dynamic axis names (also the names TensorRT optimisation profiles are computed for).
SEQUENCE = "sequence"  # prefill prompt length S
PAST = "past_length"  # decode cache length P


def past_key(layer: int) -> str:
    return f"past_key.{layer}"


def past_value(layer: int) -> str:
    return f"past_value.{layer}"


def present_key(layer: int) -> str:
    return f"present_key.{layer}"


def present_value(layer: int) -> str:
    return f"present_value.{layer}"


def past_names(layers: int) -> list[str]:
    """past_key.0, past_value.0, past_key.1, ... (the decode graph's cache inputs, in order)."""
    return [name for i in range(layers) for name in (past_key(i), past_value(i))]


def present_names(layers: int) -> list[str]:
    """present_key.0, present_value.0, ... (the cache outputs of prefill and decode, in order)."""
    return [name for i in range(layers) for name in (present_key(i), present_value(i))]
