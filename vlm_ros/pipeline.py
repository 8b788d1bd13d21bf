"""Frame + request -> Answer: the whole ROS-free path the node runs on its worker thread.

prepare (adapter) -> generate (engine) -> parse (adapter) -> mask and 3-D geometry per target -> Answer.
Errors become statuses, never exceptions: a query always gets an answer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import torch

from vlm_ros.core.geometry import target_geometry
from vlm_ros.core.types import Answer, Frame, Request, Status, Target, Task, Timings
from vlm_ros.engine import Engine, EngineError, StopReason, TorchEngine
from vlm_ros.models.base import VlmAdapter

MAX_TARGETS = 100


class Pipeline:
    def __init__(self, adapter: VlmAdapter, engine: Engine | None = None):
        self.adapter = adapter
        self.engine = engine or TorchEngine(adapter)
        self.dropped_outputs = 0  # model output entries refused by the parsers, since start
        self.dropped_geometry = 0  # targets left without 3-D although the frame had depth and intrinsics, since start

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
        try:
            t0 = time.perf_counter()
            inputs = self.adapter.prepare(frame, request)
            timings.preprocess = time.perf_counter() - t0
            result = self.engine.generate(inputs, request.max_new_tokens, deadline=deadline, on_text=on_text,
                                          cancel=cancel)
            timings.vision_encode, timings.prefill, timings.decode = (
                result.vision_encode_s, result.prefill_s, result.decode_s)
            parsed = self.adapter.parse(result.text, inputs, frame, request)
        except EngineError as exc:
            return Answer(Status.MODEL_ERROR, str(exc)[:300], timings=timings)
        except torch.cuda.OutOfMemoryError as exc:
            return Answer(Status.MODEL_ERROR, f"model ran out of GPU memory: {exc}".strip()[:300], timings=timings)
        except Exception as exc:  # the model is third-party code: report, and keep serving
            return Answer(Status.MODEL_ERROR, f"model failed: {type(exc).__name__}: {exc}"[:300], timings=timings)

        self.dropped_outputs += len(parsed.dropped)
        t0 = time.perf_counter()
        targets = [self._target(label, box, frame) for label, box in parsed.boxes[:MAX_TARGETS]]
        timings.segment = time.perf_counter() - t0
        status, message = Status.OK, ""
        if result.stop_reason == StopReason.DEADLINE:
            status, message = Status.TIMEOUT, f"deadline reached after {len(result.token_ids)} tokens; answer is partial"
        elif result.stop_reason == StopReason.CANCELLED:
            message = f"cancelled after {len(result.token_ids)} tokens; answer is partial"
        elif result.stop_reason == StopReason.LENGTH:
            message = f"token budget of {request.max_new_tokens} reached"
        if parsed.dropped:
            message = (message + "; " if message else "") + f"{len(parsed.dropped)} malformed model outputs dropped"
        return Answer(status, message, parsed.text, targets, timings, generated_tokens=len(result.token_ids))

    def warm_up(self, height: int = 480, width: int = 640, timeout_s: float = 600.0) -> Answer:
        """One short query on a blank frame, so that the first real one finds the engine's first-use work done
        (KV buffers, numpy views; on a GPU, CUDA-graph capture and compilation, which take seconds)."""
        frame = Frame(np.full((height, width, 3), 128, np.uint8), camera="warm-up")
        return self.answer(frame, Request(Task.ANSWER, "what is in the picture?", max_new_tokens=4, timeout_s=timeout_s))

    def _target(self, label: str, box, frame: Frame) -> Target:
        """A box target with its depth-layer mask and 3-D geometry where the frame has depth and intrinsics."""
        geometry = target_geometry(frame.depth, frame.intrinsics, (frame.width, frame.height), box=box)
        if geometry.position is None and frame.depth is not None and frame.intrinsics is not None:
            self.dropped_geometry += 1
        return Target(label=label, box=box, mask=geometry.mask, position=geometry.position, shape=geometry.shape)
