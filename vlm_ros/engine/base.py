"""What every generation engine returns, and the interface the pipeline calls (torch, ONNX Runtime, TensorRT,
remote)."""

from __future__ import annotations

import enum
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from vlm_ros.models.base import ModelInputs


class StopReason(str, enum.Enum):
    EOS = "eos"
    LENGTH = "length"  # the token budget was used up
    DEADLINE = "deadline"
    CANCELLED = "cancelled"


@dataclass
class GenerationResult:
    token_ids: list[int]
    text: str
    stop_reason: StopReason
    vision_encode_s: float = 0.0  # 0 when the frame's features came from the cache
    prefill_s: float = 0.0
    decode_s: float = 0.0
    vision_cached: bool = False


TextCallback = Callable[[str, int], None]  # (text so far, tokens so far)


def greedy_loop(
    first_id: int,
    advance: Callable[[int], int],
    max_new_tokens: int,
    eos: set[int],
    decode: Callable[[list[int]], str],
    *,
    deadline: float | None = None,
    on_text: TextCallback | None = None,
    cancel: threading.Event | None = None,
    ignore_eos: bool = False,
) -> tuple[list[int], str, StopReason]:
    """The per-token loop every engine shares: `advance(token)` runs one decode step and returns the next token.

    Stops on EOS, cancel, the deadline or the token budget; streams the text to `on_text` (detokenising every
    step only when someone needs the text so far).
    """
    ids: list[int] = []
    next_id, reason, text = first_id, StopReason.LENGTH, ""
    for n in range(1, max_new_tokens + 1):
        if next_id in eos and not ignore_eos:
            reason = StopReason.EOS
            break
        ids.append(next_id)
        if on_text is not None:
            text = decode(ids)
            on_text(text, n)
        if cancel is not None and cancel.is_set():
            reason = StopReason.CANCELLED
            break
        if deadline is not None and time.monotonic() >= deadline:
            reason = StopReason.DEADLINE
            break
        if n == max_new_tokens:
            break
        next_id = advance(next_id)
    if on_text is None:
        text = decode(ids)
    return ids, text, reason


class VisionCache:
    """Vision features of the last few frames, by ModelInputs.frame_key (several queries on one frame encode it once).

    The key holds id() of the frame's image; each entry keeps that image alive, so the id cannot be reused by
    another frame's image while the entry exists (a freed array's id is often reused at once).
    """

    def __init__(self, size: int = 4):
        self.size = size
        self._entries: OrderedDict[tuple, tuple[Any, Any]] = OrderedDict()  # key -> (features, image kept alive)

    def get(self, inputs: ModelInputs) -> Any | None:
        entry = self._entries.get(inputs.frame_key) if inputs.frame_key is not None else None
        if entry is None:
            return None
        self._entries.move_to_end(inputs.frame_key)
        return entry[0]

    def put(self, inputs: ModelInputs, features: Any) -> None:
        if inputs.frame_key is None or self.size <= 0:
            return
        self._entries[inputs.frame_key] = (features, inputs.frame_image)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


class EngineError(RuntimeError):
    """A failure the engine explains itself (server down, bad answer...): the pipeline reports its message as is."""


class Engine(Protocol):
    """Greedy generation for one prepared query; streams text, honours the deadline and cancel."""

    def generate(
        self,
        inputs: ModelInputs,
        max_new_tokens: int,
        *,
        deadline: float | None = None,  # time.monotonic() value
        on_text: TextCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult: ...
