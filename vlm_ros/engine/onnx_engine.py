"""The exported graphs on onnxruntime: a GraphRunner, and OnnxEngine (GraphEngine over it).

Arrays stay numpy between the graphs (the KV cache goes out of one step and into the next unchanged). The
decode state is the decode graph's inputs after input_ids (names.decode_inputs): Qwen2.5-VL's rope_delta, then
the per-layer cache, then (encoder-decoder models) the cross-attention K / V the prefill made, passed along.
The CPU wheel is what requirements.txt installs; a CUDA build of onnxruntime is used when asked for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vlm_ros.engine import names
from vlm_ros.engine.graph_engine import GraphEngine, GraphShapes


class OrtRunner:
    """vision.onnx, prefill.onnx and decode.onnx of one export directory, as onnxruntime sessions."""

    def __init__(self, directory: str | Path, shapes: GraphShapes, threads: int = 0,
                 providers: list[str] | None = None):
        import onnxruntime as ort

        directory = Path(directory)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0 = onnxruntime's default (one per core)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = providers or ["CPUExecutionProvider"]
        self.sessions = {graph: ort.InferenceSession(str(directory / file), options, providers=providers)
                         for graph, file in names.GRAPH_FILES.items()}
        self.shapes, self.image_tokens = shapes, shapes.image_tokens
        # the decode state: [rope_delta (Qwen)], past_*.i, [cross_*.i (encoder-decoder, passed along unchanged)]
        self._state = names.decode_inputs(shapes.layers, shapes.mrope, shapes.encoder_decoder)[1:]
        self._head = 1 if shapes.mrope else 0
        self._outputs = [names.LOGITS, *names.present_names(shapes.layers)]
        self._prefill_outputs = names.prefill_outputs(shapes.layers, shapes.encoder_decoder)
        self.name = f"onnxruntime ({', '.join(p.removesuffix('ExecutionProvider').lower() for p in providers)})"

    def encode(self, pixel_values, qformer_text=None) -> np.ndarray:
        feeds = {names.PIXEL_VALUES: pixel_values.detach().to("cpu").float().numpy()}
        if self.shapes.qformer_text_max:  # InstructBLIP: (qformer_input_ids, qformer_attention_mask) (1, Q)
            for name, x in zip((names.QFORMER_INPUT_IDS, names.QFORMER_ATTENTION_MASK), qformer_text, strict=True):
                feeds[name] = x.detach().to("cpu").numpy().astype(np.int64)
        return self.sessions["vision"].run([names.IMAGE_FEATURES], feeds)[0]  # (N, E)

    def prefill(self, input_ids, image_features: np.ndarray, rope=None) -> tuple[np.ndarray, list[np.ndarray]]:
        feeds = {names.INPUT_IDS: input_ids.detach().to("cpu").numpy().astype(np.int64),
                 names.IMAGE_FEATURES: image_features}
        head = []  # the decode state's inputs before the cache
        if self.shapes.mrope:
            positions, delta = rope
            feeds[names.POSITION_IDS] = positions.detach().to("cpu").numpy().astype(np.int64)  # (3, S)
            head = [np.array([delta], dtype=np.int64)]
        out = self.sessions["prefill"].run(self._prefill_outputs, feeds)
        return out[0][0], [*head, *out[1:]]  # logits (V,), [rope_delta,] presents x 2L [, cross K / V x 2L]

    def step(self, token_id: int, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        feeds = {names.INPUT_IDS: np.array([[token_id]], dtype=np.int64), **dict(zip(self._state, state, strict=True))}
        out = self.sessions["decode"].run(self._outputs, feeds)
        # rope_delta and the cross K / V stay as they are; the self-attention cache is the step's output
        return out[0][0], [*state[: self._head], *out[1:], *state[self._head + len(out) - 1:]]


class OnnxEngine(GraphEngine):
    """Greedy generation on onnxruntime for an adapter whose model was exported into `directory`."""

    def __init__(self, adapter, directory: str | Path, shapes: GraphShapes, threads: int = 0,
                 providers: list[str] | None = None, vision_cache_size: int = 4):
        super().__init__(adapter, OrtRunner(directory, shapes, threads, providers), vision_cache_size)
