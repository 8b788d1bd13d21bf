"""Batch-1 greedy generation on PyTorch (CPU or CUDA) that beats `model.generate()`.

Why faster: a static KV cache allocated once per engine and reset between queries (no per-token
re-allocation), vision features cached per frame (several queries on one frame encode it once), a lean
per-token loop (argmax on the last position only; the checkpoint's generation rules only where it sets them,
engine/decoding.py), and a decode step without transformers' per-token machinery (lean_decoder.py: captured in
a CUDA graph on CUDA, in numpy on the CPU). It produces the same tokens as `generate(do_sample=False)`; tests
check this.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from transformers import StaticCache

from vlm_ros.engine.base import GenerationResult, StopReason, TextCallback, VisionCache, greedy_loop
from vlm_ros.engine.decoding import DecodingRules
from vlm_ros.engine.hf_compat import cache_kwargs, output_cache
from vlm_ros.engine.lean_decoder import LeanDecoder
from vlm_ros.engine.vision_graph import GraphedVisionEncoder
from vlm_ros.models.base import ModelInputs, VlmAdapter


class TorchEngine:
    """Greedy decoding for one adapter. Not thread-safe: one query at a time (the node has one worker)."""

    def __init__(self, adapter: VlmAdapter, max_cache_len: int = 512, vision_cache_size: int = 4,
                 use_lean_decoder: bool = True, decode_form: str | None = None,
                 graph_vision: bool | None = None, compile_decoder: bool = False):
        self.adapter = adapter
        self.model = adapter.model
        self.max_cache_len = max_cache_len
        self._vision_cache = VisionCache(vision_cache_size)
        self._eos = adapter.eos_token_ids
        self.rules = DecodingRules.from_generation_config(adapter.generation_config)  # read once, at load
        self._lean_supported = use_lean_decoder and LeanDecoder.supports(self.model)
        self._lean: LeanDecoder | None = None
        self._decode_form = decode_form  # lean_decoder.FORMS; None: static (CUDA graph) on CUDA, numpy on CPU
        self._compile_decoder = compile_decoder
        on_cuda = adapter.device.type == "cuda"
        self._encode = (GraphedVisionEncoder(adapter) if (on_cuda if graph_vision is None else graph_vision)
                        else adapter.encode_vision)

    # --- public -----------------------------------------------------------------------------------------
    @torch.inference_mode()
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
        if not self.adapter.supports_static_cache:
            return self._generate_hf(inputs, max_new_tokens, deadline, on_text, cancel, ignore_eos)

        t0 = time.perf_counter()
        vision, cached = self._vision_features(inputs)
        self._sync()
        t1 = time.perf_counter()
        logits, step = self._prefill(inputs, vision, inputs.prompt_length + max_new_tokens)
        pick = self.rules.picker(inputs.tensors["input_ids"][0], max_new_tokens)
        next_id = pick(logits)  # the host copy waits for the prefill
        t2 = time.perf_counter()

        ids, text, reason = greedy_loop(next_id, lambda token_id: pick(step(token_id)), max_new_tokens,
                                        self._eos, self.adapter.decode_text,
                                        deadline=deadline, on_text=on_text, cancel=cancel,
                                        ignore_eos=ignore_eos)
        t3 = time.perf_counter()
        return GenerationResult(ids, text, reason, t1 - t0 if not cached else 0.0, t2 - t1, t3 - t2, cached)

    @torch.inference_mode()
    def first_logits(self, inputs: ModelInputs) -> np.ndarray:
        """The raw next-token logits (V,) after the prompt, as float32 numpy: what the self-check compares."""
        if not self.adapter.supports_static_cache:
            out = self.model.generate(**inputs.tensors, max_new_tokens=1, do_sample=False, output_logits=True,
                                      return_dict_in_generate=True)
            return out.logits[0][0].float().cpu().numpy()
        logits, _ = self._prefill(inputs, self._vision_features(inputs)[0], inputs.prompt_length + 1)
        return logits.float().cpu().numpy()

    def _sync(self) -> None:
        if self.adapter.device.type == "cuda":
            torch.cuda.synchronize(self.adapter.device)

    def clear_vision_cache(self) -> None:
        self._vision_cache.clear()

    # --- internals --------------------------------------------------------------------------------------
    def _prefill(self, inputs: ModelInputs, vision: dict[str, Any], needed: int
                 ) -> tuple[torch.Tensor, Callable[[int], Any]]:
        """Run the prompt; return its last-position logits (V,) and the decode step (token -> logits (V,))."""
        prompt = self.adapter.forward_inputs(inputs)
        lean = self._lean_decoder(needed)
        if lean is not None:  # prefill by the model's own forward, then our lean per-token step
            out = self.model(**prompt, mm_encoder_outputs=vision, use_cache=True, logits_to_keep=1)
            lean.load_prefix(output_cache(out), inputs.prompt_length)
            return out.logits[0, -1], lean.step
        # any other decoder: the model's forward on a pre-allocated static cache
        cache_arg = cache_kwargs(self._static_cache(needed))
        out = self.model(**prompt, mm_encoder_outputs=vision, **cache_arg, use_cache=True, logits_to_keep=1)
        step_kwargs = self._step_kwargs(prompt)
        tok = torch.empty((1, 1), dtype=torch.long, device=self.adapter.device)

        def step(token_id: int) -> torch.Tensor:
            tok.fill_(token_id)
            return self.model(input_ids=tok, **cache_arg, use_cache=True, **step_kwargs).logits[0, -1]

        return out.logits[0, -1], step

    def _vision_features(self, inputs: ModelInputs) -> tuple[dict[str, Any], bool]:
        features = self._vision_cache.get(inputs)
        if features is not None:
            return features, True
        features = self._encode(inputs)
        self._vision_cache.put(inputs, features)
        return features, False

    def _buffer_len(self, needed: int) -> int:
        """KV buffer length: at least max_cache_len, grown in powers of two (few re-allocations, few graphs)."""
        return max(self.max_cache_len, 1 << (needed - 1).bit_length())

    def _static_cache(self, needed: int) -> StaticCache:
        # A fresh cache per query: some models (PaliGemma) treat a reset-but-allocated cache as "not the first
        # iteration" and build the wrong prefill mask. Only models without the lean decoder take this path.
        return StaticCache(config=self.model.config, max_cache_len=self._buffer_len(needed))

    def _lean_decoder(self, needed: int) -> LeanDecoder | None:
        if not self._lean_supported:
            return None
        if self._lean is None or self._lean.max_len < needed:
            self._lean = LeanDecoder(self.model, max_len=self._buffer_len(needed), form=self._decode_form,
                                     compile=self._compile_decoder)
        return self._lean

    def _step_kwargs(self, prompt: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Extra inputs every decode step needs (family hook: e.g. token types for Qwen)."""
        return self.adapter.decode_step_inputs(prompt) if hasattr(self.adapter, "decode_step_inputs") else {}

    def _generate_hf(self, inputs, max_new_tokens, deadline, on_text, cancel, ignore_eos=False) -> GenerationResult:
        """transformers' generate() with the same streaming, cancel and deadline behaviour."""
        from transformers import StoppingCriteria, StoppingCriteriaList

        engine = self
        state = {"reason": StopReason.LENGTH, "t_first": None}
        prompt_len = inputs.prompt_length if not self.model.config.is_encoder_decoder else 0

        class _Watch(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                if state["t_first"] is None:
                    state["t_first"] = time.perf_counter()
                new = [i for i in input_ids[0, prompt_len:].tolist() if i not in engine._eos]
                if engine.model.config.is_encoder_decoder:
                    new = [i for i in new if i != engine.model.generation_config.decoder_start_token_id]
                if on_text is not None and new:
                    on_text(engine.adapter.decode_text(new), len(new))
                if cancel is not None and cancel.is_set():
                    state["reason"] = StopReason.CANCELLED
                elif deadline is not None and time.monotonic() >= deadline:
                    state["reason"] = StopReason.DEADLINE
                else:
                    return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
                return torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        t0 = time.perf_counter()
        out = self.model.generate(**inputs.tensors, max_new_tokens=max_new_tokens, do_sample=False,
                                  **({"min_new_tokens": max_new_tokens} if ignore_eos else {}),
                                  stopping_criteria=StoppingCriteriaList([_Watch()]))
        t2 = time.perf_counter()
        ids = out[0, prompt_len:].tolist()
        start = self.model.generation_config.decoder_start_token_id if self.model.config.is_encoder_decoder else None
        ids = [i for i in ids if i not in self._eos and i != start and i != self.model.generation_config.pad_token_id]
        reason = state["reason"]
        if reason == StopReason.LENGTH and len(ids) < max_new_tokens:
            reason = StopReason.EOS
        t1 = state["t_first"] or t2
        return GenerationResult(ids, self.adapter.decode_text(ids), reason, 0.0, t1 - t0, t2 - t1, False)
