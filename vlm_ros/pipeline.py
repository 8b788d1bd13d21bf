"""Frame + request -> Answer: the whole ROS-free path the node runs on its worker thread.

prepare (adapter) -> generate (engine) -> parse (adapter) -> targets (grounding: detector boxes where the node
pairs one, masks, 3-D geometry) -> Answer. Errors become statuses, never exceptions: a query always gets an answer.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

import numpy as np
import torch

from vlm_ros.core.types import Answer, Frame, Request, Status, Task, Timings
from vlm_ros.engine import Engine, EngineError, StopReason, TorchEngine
from vlm_ros.engine.self_check import SelfCheckResult
from vlm_ros.grounding import POLYGON_MAX_NEW_TOKENS, Grounder
from vlm_ros.models.base import VlmAdapter
from vlm_ros.models.parsing import PolygonResult


class Pipeline:
    def __init__(self, adapter: VlmAdapter, engine: Engine | None = None, grounder: Grounder | None = None):
        self.adapter = adapter
        self.engine = engine or TorchEngine(adapter)
        self.grounder = grounder or Grounder()  # no detector, no segmenter: the VLM's own boxes
        self.self_check: SelfCheckResult | None = None  # the backend's check before serving (backends.py), if run
        self.self_check_note = ""  # why a due check did not run (e.g. its reference would not fit in memory)

    @property
    def drops(self) -> collections.Counter[str]:
        """Dropped outputs by reason since start: "model output" (the parsers), "detector box", "segmenter mask"..."""
        return self.grounder.drops

    @property
    def dropped_outputs(self) -> int:
        """All outputs refused since start (model text entries, detector boxes, masks, polygons)."""
        return sum(self.grounder.drops.values())

    def answer(
        self,
        frame: Frame,
        request: Request,
        *,
        deadline: float | None = None,  # time.monotonic(); None = request.timeout_s from now
        on_text: Callable[[str, int], None] | None = None,
        cancel: threading.Event | None = None,
        queue_wait: float = 0.0,
    ) -> Answer:
        timings = Timings(queue_wait=queue_wait)
        if deadline is None:
            deadline = time.monotonic() + request.timeout_s
        if time.monotonic() >= deadline:
            return Answer(Status.TIMEOUT, "deadline passed before the query started", timings=timings)
        # a grounding request that the detector boxes: the VLM is asked to name the objects
        vlm_request = self.grounder.vlm_request(request, self.adapter)
        try:
            t0 = time.perf_counter()
            inputs = self.adapter.prepare(frame, vlm_request)
            timings.preprocess = time.perf_counter() - t0
            result = self.engine.generate(inputs, request.max_new_tokens, deadline=deadline, on_text=on_text,
                                          cancel=cancel)
            timings.vision_encode, timings.prefill, timings.decode = (
                result.vision_encode_s, result.prefill_s, result.decode_s)
            parsed = self.adapter.parse(result.text, inputs, frame, vlm_request)
            self.grounder.drops["model output"] += len(parsed.dropped)
            grounded = self.grounder.targets(frame, request, parsed, self.adapter, timings=timings, deadline=deadline,
                                             polygons=lambda label: self._polygons(frame, label, deadline, cancel))
        except EngineError as exc:
            return Answer(Status.MODEL_ERROR, str(exc)[:300], timings=timings)
        except torch.cuda.OutOfMemoryError as exc:
            return Answer(Status.MODEL_ERROR, f"model ran out of GPU memory: {exc}".strip()[:300], timings=timings)
        except Exception as exc:  # the model is third-party code: report, and keep serving
            return Answer(Status.MODEL_ERROR, f"model failed: {type(exc).__name__}: {exc}"[:300], timings=timings)

        status, message = Status.OK, ""
        if result.stop_reason == StopReason.DEADLINE:
            status = Status.TIMEOUT
            message = f"deadline reached after {len(result.token_ids)} tokens; answer is partial"
        elif result.stop_reason == StopReason.CANCELLED:
            message = f"cancelled after {len(result.token_ids)} tokens; answer is partial"
        elif result.stop_reason == StopReason.LENGTH:
            message = f"token budget of {request.max_new_tokens} reached"
        if grounded.cut_by_deadline:
            status = Status.TIMEOUT
        if parsed.dropped:
            message = (message + "; " if message else "") + f"{len(parsed.dropped)} malformed model outputs dropped"
        message = "; ".join(m for m in (message, *grounded.notes) if m)
        return Answer(status, message, parsed.text, grounded.targets, timings, generated_tokens=len(result.token_ids))

    def _polygons(self, frame: Frame, label: str, deadline: float, cancel: threading.Event | None
                  ) -> PolygonResult | None:
        """The VLM's outline polygons of `label` in source pixels (one generation on the cached frame features), or
        None when its family has no polygon prompt. A polygon cut off by the token budget or deadline is dropped."""
        prompt = getattr(self.adapter, "polygon_prompt", lambda _: None)(label)
        if prompt is None:
            return None
        inputs = self.adapter.prepare_prompt(frame, prompt)
        result = self.engine.generate(inputs, POLYGON_MAX_NEW_TOKENS, deadline=deadline, cancel=cancel)
        polygons = self.adapter.parse_polygons(result.text, inputs)
        if result.stop_reason != StopReason.EOS and polygons.polygons:
            polygons.polygons.pop()
            polygons.dropped.append(f"truncated: polygon output stopped ({result.stop_reason.value})")
        return polygons

    def warm_up(self, height: int = 480, width: int = 640, timeout_s: float = 600.0) -> Answer:
        """One short query on a blank frame, so that the first real one finds the engine's first-use work done
        (KV buffers, numpy views; on a GPU, CUDA-graph capture and compilation, which take seconds)."""
        frame = Frame(np.full((height, width, 3), 128, np.uint8), camera="warm-up")
        return self.answer(frame, Request(Task.ANSWER, "what is in the picture?", max_new_tokens=4,
                                          timeout_s=timeout_s))
