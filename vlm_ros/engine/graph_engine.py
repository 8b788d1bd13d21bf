"""Greedy generation over exported graphs (vision, prefill, decode step), written once for every graph runtime.

A `GraphRunner` runs the three graphs of vlm_ros/export/names.py on some runtime (onnxruntime, TensorRT); the
`GraphEngine` owns everything else: the per-frame vision-feature cache, the greedy loop, streaming text,
stop strings, the token budget, the deadline and cancel, exactly as TorchEngine does them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

from vlm_ros.engine.base import GenerationResult, TextCallback, VisionCache, greedy_loop
from vlm_ros.models.base import ModelInputs


class GraphRunner(Protocol):
    """The three graphs on one runtime. Logits are any array with `.argmax()` ((V,) numpy or torch)."""

    name: str  # for descriptions: "onnxruntime (cpu)", "tensorrt (fp16, NVIDIA ...)"
    image_tokens: int

    def encode(self, pixel_values) -> Any:
        """pixel_values (1, C, H, W) torch tensor -> image features (runtime's own array type)."""

    def prefill(self, input_ids, image_features) -> tuple[Any, Any]:
        """input_ids (1, S) torch int64 -> (logits (V,), KV state)."""

    def step(self, token_id: int, state: Any) -> tuple[Any, Any]:
        """One decode step -> (logits (V,), the next KV state)."""


class GraphEngine:
    """Engine (vlm_ros.engine.base) over a GraphRunner. Not thread-safe: one query at a time."""

    def __init__(self, adapter, runner: GraphRunner, vision_cache_size: int = 4):
        self.adapter = adapter
        self.runner = runner
        self._eos = adapter.eos_token_ids
        self._vision_cache = VisionCache(vision_cache_size)

    def generate(
        self,
        inputs: ModelInputs,
        max_new_tokens: int,
        *,
        deadline: float | None = None,  # time.monotonic() value
        stop_strings: Sequence[str] = (),
        on_text: TextCallback | None = None,
        cancel: threading.Event | None = None,
        ignore_eos: bool = False,  # benchmarks: always generate max_new_tokens
    ) -> GenerationResult:
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        input_ids = inputs.tensors["input_ids"]  # (1, S)
        found = int((input_ids == self.adapter.model.config.image_token_id).sum())
        if found != self.runner.image_tokens:
            raise ValueError(f"prompt has {found} image tokens; the exported graphs expect {self.runner.image_tokens}")
        t0 = time.perf_counter()
        features, cached = self._vision_features(inputs)
        t1 = time.perf_counter()
        logits, state = self.runner.prefill(input_ids, features)
        next_id = int(logits.argmax())
        t2 = time.perf_counter()

        def advance(token_id: int) -> int:
            nonlocal state
            logits, state = self.runner.step(token_id, state)
            return int(logits.argmax())

        ids, text, reason = greedy_loop(next_id, advance, max_new_tokens, self._eos, self.adapter.decode_text,
                                        deadline=deadline, stop_strings=stop_strings, on_text=on_text, cancel=cancel,
                                        ignore_eos=ignore_eos)
        t3 = time.perf_counter()
        return GenerationResult(ids, text, reason, t1 - t0 if not cached else 0.0, t2 - t1, t3 - t2, cached)

    def clear_vision_cache(self) -> None:
        self._vision_cache.clear()

    def _vision_features(self, inputs: ModelInputs) -> tuple[Any, bool]:
        features = self._vision_cache.get(inputs)
        if features is not None:
            return features, True
        features = self.runner.encode(inputs.tensors["pixel_values"])
        self._vision_cache.put(inputs, features)
        return features, False
