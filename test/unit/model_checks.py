"""Shared pieces of the model tests: random frames, generate()'s reference tokens and the engine against them,
one torch thread."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlm_ros.core.types import Frame


def frame(seed: int = 0, h: int = 120, w: int = 160, stamp_ns: int = 1) -> Frame:
    """A random RGB frame (non-square on purpose: box mapping must handle aspect changes)."""
    return Frame(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), stamp_ns=stamp_ns,
                 camera="front")


def reference_tokens(adapter, inputs, n: int) -> list[int]:
    """transformers' greedy generate() on the same inputs, prompt removed, cut at the first end token."""
    out = adapter.model.generate(**inputs.tensors, do_sample=False, max_new_tokens=n)
    ids = out[0, inputs.prompt_length:].tolist()
    return ids[: next((i for i, t in enumerate(ids) if t in adapter.eos_token_ids), len(ids))]


def check_engine_equals_generate(adapter, engine, requests, n: int = 12) -> list[bool]:
    """Every request on two frames through one engine (later queries reuse its cache and the frame's vision
    features): its tokens equal generate()'s, and are a real sequence (>= 6 before an end token). Returns whether
    each answer found the frame's vision features cached."""
    cached = []
    for seed in (0, 1):
        f = frame(seed, stamp_ns=seed + 1)
        for request in requests:
            inputs = adapter.prepare(f, request)
            result = engine.generate(inputs, n)
            assert result.token_ids == reference_tokens(adapter, inputs, n), request
            assert len(result.token_ids) >= 6
            cached.append(result.vision_cached)
    return cached


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models are latency-bound: one intra-op thread is faster, and steadier on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
