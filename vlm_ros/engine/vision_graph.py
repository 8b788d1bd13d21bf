"""The vision encoder captured in a CUDA graph, one graph per input shape.

A ViT of 27 layers launches hundreds of small kernels per image; at batch 1 on a large GPU that launch
overhead is a large part of the encode time. Capturing the encoder once and replaying it removes it.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from vlm_ros.models.base import ModelInputs, VlmAdapter


class GraphedVisionEncoder:
    def __init__(self, adapter: VlmAdapter):
        self.adapter = adapter
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], Any] | None] = {}

    def _vision_tensors(self, inputs: ModelInputs) -> dict[str, torch.Tensor]:
        names = self.adapter.vision_input_names
        return {k: v for k, v in inputs.tensors.items() if k in names or k.startswith("image_")}

    def __call__(self, inputs: ModelInputs) -> dict[str, Any]:
        tensors = self._vision_tensors(inputs)
        key = tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(tensors.items()))
        if key not in self._graphs:
            try:
                self._graphs[key] = self._capture(inputs, tensors)
            except RuntimeError:  # encoders with host-side work per image (e.g. Qwen's window index) cannot be captured
                self._graphs[key] = None
        if self._graphs[key] is None:
            return self.adapter.encode_vision(inputs)
        graph, static, output = self._graphs[key]
        for k, v in tensors.items():
            static[k].copy_(v)
        graph.replay()
        # The graph's output buffers are overwritten by the next replay: hand out copies.
        pooled = output.pooler_output
        pooled = type(pooled)(t.clone() for t in pooled) if isinstance(pooled, (tuple, list)) else pooled.clone()
        return {"image": BaseModelOutputWithPooling(pooler_output=pooled)}

    def _capture(self, inputs: ModelInputs, tensors: dict[str, torch.Tensor]):
        static = {k: v.clone() for k, v in tensors.items()}
        static_inputs = ModelInputs({**inputs.tensors, **static}, inputs.transform)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(2):
                self.adapter.encode_vision(static_inputs)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.inference_mode():
            output = self.adapter.encode_vision(static_inputs)["image"]
        return graph, static, output
