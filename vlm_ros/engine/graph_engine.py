"""Greedy generation over exported graphs (vision, prefill, decode step), written once for every graph runtime.

A `GraphRunner` runs the three graphs of vlm_ros/engine/names.py on some runtime (onnxruntime, TensorRT); the
`GraphEngine` owns everything else: the checks that a query fits the export (pixel shape, Qwen's grid, the image
token count), Qwen2.5-VL's 3-D prefill positions (computed in torch by the model's own function), the per-frame
vision-feature cache (InstructBLIP's keyed by frame and instruction: its Q-Former reads both), the greedy loop
with the checkpoint's generation rules (engine/decoding.py), streaming text, the token budget, the deadline and
cancel, exactly as TorchEngine does them.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch

from vlm_ros.engine.base import GenerationResult, TextCallback, VisionCache, greedy_loop
from vlm_ros.engine.decoding import DecodingRules
from vlm_ros.models.base import ModelInputs


@dataclass(frozen=True)
class GraphShapes:
    """The fixed sizes of one model's graphs (dynamic axes: prompt length S and cache length P): made by the
    exporter, stored in its manifest, read by every GraphRunner."""

    pixel_shape: tuple[int, ...]  # the vision graph's pixel_values, in the family's layout (names.py)
    image_tokens: int  # N
    embed_dim: int  # E (decoder hidden size)
    layers: int
    kv_heads: int
    head_dim: int
    vocab: int
    image_token_id: int
    image_grid: tuple[int, ...] = ()  # Qwen2.5-VL: the (t, h, w) patch grid the vision graph was traced for
    mrope: bool = False  # multimodal 3-D rope: prefill takes position_ids, decode takes rope_delta
    image_size: tuple[int, ...] = ()  # (H, W) of the frames a frame-sized export is for; () = any frame size
    qformer_text_max: int = 0  # InstructBLIP: the vision graph takes the instruction's Q-Former tokens (up to this)
    encoder_decoder: bool = False  # Florence-2, Flan-T5: prefill = encoder + first decoder step, cross KV in the state

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GraphShapes:
        return cls(**{**d, **{k: tuple(d[k]) for k in ("pixel_shape", "image_grid", "image_size") if k in d}})


def mrope_positions(model, tensors: dict) -> tuple[torch.Tensor, int]:
    """Qwen2.5-VL: the prompt's 3-D rope positions (3, S) and its rope delta, by the model's own get_rope_index."""
    positions, deltas = model.model.get_rope_index(
        tensors["input_ids"], mm_token_type_ids=tensors["mm_token_type_ids"],
        image_grid_thw=tensors["image_grid_thw"], attention_mask=tensors.get("attention_mask"))
    return positions[:, 0].to(torch.int64), int(deltas.reshape(-1)[0])


class GraphRunner(Protocol):
    """The three graphs on one runtime. Logits are any array with `.argmax()` ((V,) numpy or torch)."""

    name: str  # for descriptions: "onnxruntime (cpu)", "tensorrt (fp16, NVIDIA ...)"
    image_tokens: int
    shapes: GraphShapes

    def encode(self, pixel_values, qformer_text: tuple[Any, Any] | None = None) -> Any:
        """pixel_values torch tensor (shape `shapes.pixel_shape`) [, qformer_text: (qformer_input_ids,
        qformer_attention_mask) (1, Q) torch int64 when `shapes.qformer_text_max` (InstructBLIP)] -> image
        features (runtime's own array type)."""

    def prefill(self, input_ids, image_features, rope: tuple[Any, int] | None = None) -> tuple[Any, Any]:
        """input_ids (1, S) torch int64 [, rope: (position_ids (3, S) torch int64, rope delta) when
        `shapes.mrope`] -> (logits (V,), decode state: the decode graph's inputs after input_ids, in order)."""

    def step(self, token_id: int, state: Any) -> tuple[Any, Any]:
        """One decode step -> (logits (V,), the next decode state)."""


class GraphEngine:
    """Engine (vlm_ros.engine.base) over a GraphRunner. Not thread-safe: one query at a time."""

    def __init__(self, adapter, runner: GraphRunner, vision_cache_size: int = 4):
        self.adapter = adapter
        self.runner = runner
        self._eos = adapter.eos_token_ids
        self.rules = DecodingRules.from_generation_config(adapter.generation_config)  # read once, at load
        self._vision_cache = VisionCache(vision_cache_size)

    def generate(
        self,
        inputs: ModelInputs,
        max_new_tokens: int,
        *,
        deadline: float | None = None,  # time.monotonic() value
        on_text: TextCallback | None = None,
        cancel: threading.Event | None = None,
        ignore_eos: bool = False,  # benchmarks: always generate max_new_tokens
    ) -> GenerationResult:
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        self._check_fits_export(inputs)
        t0 = time.perf_counter()
        features, cached = self._vision_features(inputs)
        t1 = time.perf_counter()
        logits, state = self._prefill(inputs, features)
        pick = self.rules.picker(self._context(inputs), max_new_tokens)
        next_id = pick(logits)
        t2 = time.perf_counter()

        def advance(token_id: int) -> int:
            nonlocal state
            logits, state = self.runner.step(token_id, state)
            return pick(logits)

        ids, text, reason = greedy_loop(next_id, advance, max_new_tokens, self._eos, self.adapter.decode_text,
                                        deadline=deadline, on_text=on_text, cancel=cancel,
                                        ignore_eos=ignore_eos)
        t3 = time.perf_counter()
        return GenerationResult(ids, text, reason, t1 - t0 if not cached else 0.0, t2 - t1, t3 - t2, cached)

    def first_logits(self, inputs: ModelInputs) -> np.ndarray:
        """The raw next-token logits (V,) after the prompt, as float32 numpy: what the self-check compares."""
        self._check_fits_export(inputs)
        logits, _ = self._prefill(inputs, self._vision_features(inputs)[0])
        logits = logits.detach().float().cpu().numpy() if isinstance(logits, torch.Tensor) else logits
        return np.asarray(logits, dtype=np.float32)

    def _prefill(self, inputs: ModelInputs, features: Any) -> tuple[Any, Any]:
        rope = mrope_positions(self.adapter.model, inputs.tensors) if self.runner.shapes.mrope else None
        return self.runner.prefill(inputs.tensors["input_ids"], features, rope)  # input_ids (1, S)

    def _context(self, inputs: ModelInputs) -> Any:
        """The ids generate() would see before the first new token: the prompt, or an encoder-decoder's start token."""
        if not self.runner.shapes.encoder_decoder:
            return inputs.tensors["input_ids"][0]
        start = getattr(self.adapter.generation_config, "decoder_start_token_id", None)
        return [int(self.adapter.model.config.get_text_config().decoder_start_token_id if start is None else start)]

    def _check_fits_export(self, inputs: ModelInputs) -> None:
        """Refuse, with the reason, a query whose image input or prompt the exported graphs were not made for."""
        shapes, t = self.runner.shapes, inputs.tensors
        sized = f" (exported for {shapes.image_size[0]}x{shapes.image_size[1]} frames: export again with this " \
                "frame size)" if shapes.image_size else ""
        if tuple(t["pixel_values"].shape) != tuple(shapes.pixel_shape):
            raise ValueError(f"image input {tuple(t['pixel_values'].shape)} differs from the exported graphs' "
                             f"{tuple(shapes.pixel_shape)}{sized}")
        if shapes.image_grid and tuple(int(v) for v in t["image_grid_thw"][0]) != tuple(shapes.image_grid):
            raise ValueError(f"image grid {t['image_grid_thw'][0].tolist()} differs from the exported graphs' "
                             f"{list(shapes.image_grid)}{sized}")
        if shapes.qformer_text_max and t["qformer_input_ids"].shape[1] > shapes.qformer_text_max:
            raise ValueError(f"instruction has {t['qformer_input_ids'].shape[1]} Q-Former tokens; the exported "
                             f"vision graph takes at most {shapes.qformer_text_max}")
        mask = t.get("pixel_attention_mask")
        if mask is not None and not bool(mask.all()):
            raise ValueError("padded image tiles: the exported vision graph takes every tile as unpadded")
        found = int((t["input_ids"] == self.adapter.model.config.image_token_id).sum())
        if found != self.runner.image_tokens:
            raise ValueError(f"prompt has {found} image tokens; the exported graphs expect {self.runner.image_tokens}")

    def clear_vision_cache(self) -> None:
        self._vision_cache.clear()

    def _vision_features(self, inputs: ModelInputs) -> tuple[Any, bool]:
        text = None
        if self.runner.shapes.qformer_text_max:  # InstructBLIP: the features depend on the instruction as well
            t = inputs.tensors
            text = (t["qformer_input_ids"], t.get("qformer_attention_mask", torch.ones_like(t["qformer_input_ids"])))
            if inputs.frame_key is not None:
                key = (inputs.frame_key, tuple(text[0][0].tolist()), tuple(text[1][0].tolist()))
                inputs = dataclasses.replace(inputs, frame_key=key)
        features = self._vision_cache.get(inputs)
        if features is not None:
            return features, True
        features = self.runner.encode(inputs.tensors["pixel_values"], text)
        self._vision_cache.put(inputs, features)
        return features, False
