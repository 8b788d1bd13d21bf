"""Self-check before serving: a backend's answer to a fixed probe against the eager torch float32 reference.

Compiled and reduced-precision backends can be silently wrong (an engine built with a broken precision flag, an
export that lost a weight). After such a backend is built, it answers one fixed probe (a deterministic synthetic
frame and a fixed question, `PROBE_TOKENS` greedy tokens); transformers' `generate()` on the same checkpoint in
float32 on the CPU answers it too. Compared: the first step's raw logits (max abs difference relative to the
reference's logit range, and whether the top-1 token agrees) and the greedy tokens (how many leading ones agree).
Beyond the tolerance of the backend's kind (`TOLERANCES`), the check fails with the figures and the node
refuses to serve (vlm_ros/backends.py raises `SelfCheckError`; configure fails with its message).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from vlm_ros.core.types import Frame, Request, Task
from vlm_ros.engine.base import StopReason
from vlm_ros.models.base import ModelInputs, VlmAdapter

PROBE_QUESTION = "what is in the picture?"
PROBE_TOKENS = 8
EOS = -1  # stands for "stopped on an end token" in the compared token lists


@dataclass(frozen=True)
class Tolerance:
    """How far a backend of one kind may be from the reference on the probe."""

    logit_diff: float  # most max |backend - reference| of the first-step logits, as a fraction of their range
    tokens: int  # leading greedy tokens that must agree (or all of the reference's answer, if shorter)


# By the numeric kind of the backend: float32 graphs differ from torch by rounding only (TensorRT's fp32 may use
# TF32 matrix products); half precision keeps about 3 decimal digits (bfloat16 2), int8 / fp8 weights about 2,
# int4 weights fewer.
# A near tie may legitimately flip a later token in reduced precision, so fewer leading tokens are required there.
TOLERANCES: dict[str, Tolerance] = {
    "float32": Tolerance(0.005, PROBE_TOKENS),
    "float16": Tolerance(0.03, 4),
    "bfloat16": Tolerance(0.06, 2),
    "int8": Tolerance(0.1, 2),
    "int4": Tolerance(0.15, 1),
    "fp8": Tolerance(0.15, 1),
}


class SelfCheckError(RuntimeError):
    """The backend's answer to the probe is beyond tolerance: it must not serve."""

    def __init__(self, result: SelfCheckResult):
        super().__init__(result.summary())
        self.result = result


@dataclass
class SelfCheckResult:
    kind: str  # a key of TOLERANCES
    tolerance: Tolerance
    logit_diff: float  # max |backend - reference| first-step logits / the reference's logit range
    top1_agrees: bool  # the backend's first token is the reference's (or within the logit tolerance of it: a tie)
    tokens_agreeing: int  # leading greedy tokens equal (EOS counts as a token)
    tokens_required: int
    reference_tokens: list[int] = field(default_factory=list)  # EOS marks an end token
    backend_tokens: list[int] = field(default_factory=list)
    seconds: float = 0.0  # the whole check, reference included

    @property
    def passed(self) -> bool:
        return (bool(np.isfinite(self.logit_diff)) and self.logit_diff <= self.tolerance.logit_diff
                and self.top1_agrees and self.tokens_agreeing >= self.tokens_required)

    def summary(self) -> str:
        """One line with the figures, for the log, diagnostics and the configure error."""
        verdict = "passed" if self.passed else "FAILED"
        reference = "" if self.passed else f"; reference tokens {self.reference_tokens}, backend {self.backend_tokens}"
        return (f"self-check {verdict} ({self.kind}): first-step logits differ by up to "
                f"{100 * self.logit_diff:.3g}% of their range (tolerance {100 * self.tolerance.logit_diff:.3g}%), "
                f"top-1 {'agrees' if self.top1_agrees else 'differs'}, {self.tokens_agreeing}/"
                f"{len(self.reference_tokens)} greedy tokens agree (need {self.tokens_required}); "
                f"{self.seconds:.2f} s{reference}")


def probe_frame(height: int = 480, width: int = 640) -> Frame:
    """The fixed probe image: colour ramps, a checkerboard and a red square, the same on every machine."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                      ((x // 16 + y // 16) % 2) * 255], axis=-1).astype(np.uint8)  # (H, W, 3)
    image[height // 3: 2 * height // 3, width // 3: 2 * width // 3] = (220, 30, 30)
    return Frame(image, camera="self-check")


def compare(kind: str, reference_logits: np.ndarray, reference_tokens: list[int], backend_logits: np.ndarray,
            backend_tokens: list[int], seconds: float = 0.0) -> SelfCheckResult:
    """The figures and verdict for one probe: logits (V,) float, token lists with EOS marking an end token."""
    tolerance = TOLERANCES[kind]
    reference_logits = np.asarray(reference_logits, np.float64)
    backend_logits = np.asarray(backend_logits, np.float64)
    if backend_logits.shape != reference_logits.shape:
        raise ValueError(f"backend logits {backend_logits.shape} vs reference {reference_logits.shape}")
    scale = max(float(reference_logits.max() - reference_logits.min()), 1e-6)
    diff = float(np.abs(backend_logits - reference_logits).max()) / scale
    if not np.isfinite(backend_logits).all():
        diff = float("inf")
    chosen = int(np.nan_to_num(backend_logits, nan=-np.inf).argmax())
    top1 = chosen == int(reference_logits.argmax()) or \
        reference_logits[chosen] >= reference_logits.max() - tolerance.logit_diff * scale
    agreeing = 0
    for want, got in zip(reference_tokens, backend_tokens, strict=False):
        if want != got:
            break
        agreeing += 1
    return SelfCheckResult(kind, tolerance, diff, bool(top1), agreeing, min(tolerance.tokens, len(reference_tokens)),
                           list(reference_tokens), list(backend_tokens), seconds)


@torch.inference_mode()
def reference_answer(adapter: VlmAdapter, inputs: ModelInputs, max_new_tokens: int) -> tuple[np.ndarray, list[int]]:
    """transformers' greedy generate() on the inputs: the first step's raw logits (V,) and the new tokens (cut
    after the first end token, which becomes EOS)."""
    out = adapter.model.generate(**inputs.tensors, do_sample=False, max_new_tokens=max_new_tokens,
                                 output_logits=True, return_dict_in_generate=True)
    start = 1 if adapter.model.config.is_encoder_decoder else inputs.prompt_length  # after the decoder start token
    tokens = []
    for token in out.sequences[0, start:].tolist():
        if token in adapter.eos_token_ids:
            tokens.append(EOS)
            break
        tokens.append(token)
    return out.logits[0][0].float().cpu().numpy(), tokens


def run_self_check(engine, adapter: VlmAdapter, reference: VlmAdapter, kind: str,
                   image_size: tuple[int, int] = (480, 640)) -> SelfCheckResult:
    """Probe `engine` (with `first_logits`, e.g. TorchEngine, GraphEngine; inputs from `adapter`) and the float32
    CPU `reference` adapter of the same checkpoint; compare (see the module docstring)."""
    t0 = time.monotonic()
    frame = probe_frame(*image_size)
    request = Request(Task.ANSWER, PROBE_QUESTION, max_new_tokens=PROBE_TOKENS)
    inputs = adapter.prepare(frame, request)
    backend_logits = engine.first_logits(inputs)
    result = engine.generate(inputs, PROBE_TOKENS)
    engine.clear_vision_cache()  # the probe frame is not a camera's
    backend_tokens = result.token_ids + ([EOS] if result.stop_reason == StopReason.EOS else [])
    reference_logits, reference_tokens = reference_answer(reference, reference.prepare(frame, request), PROBE_TOKENS)
    return compare(kind, reference_logits, reference_tokens, backend_logits, backend_tokens, time.monotonic() - t0)
