"""The exported graphs as TensorRT engines (TensorRT 10 API): a GraphRunner with torch CUDA tensors as I/O
buffers on one CUDA stream, and TensorRTEngine (GraphEngine over it); the `tensorrt` backend (vlm_ros/backends.py)
builds them. Needs `tensorrt` and a CUDA device; not executed in this project's CI (TensorRT is not installable
there), see README "TensorRT".
"""

from __future__ import annotations

from pathlib import Path

import torch

from vlm_ros.engine import names
from vlm_ros.engine.graph_engine import GraphEngine, GraphShapes


def _torch_dtype(trt_dtype) -> torch.dtype:
    import tensorrt as trt

    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16,
             trt.int64: torch.int64, trt.int32: torch.int32, trt.int8: torch.int8, trt.bool: torch.bool}
    if trt_dtype not in table:
        raise TypeError(f"TensorRT tensor type {trt_dtype} has no torch buffer type here")
    return table[trt_dtype]


class TrtGraph:
    """One deserialized engine and its execution context; inputs and outputs are torch CUDA tensors."""

    def __init__(self, runtime, path: Path, device: torch.device):
        import tensorrt as trt

        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not load {path} (built for another GPU or TensorRT version?)")
        self.context = self.engine.create_execution_context()
        self.device = device
        tensors = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [t for t in tensors if self.engine.get_tensor_mode(t) == trt.TensorIOMode.INPUT]
        self.outputs = [t for t in tensors if self.engine.get_tensor_mode(t) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {t: _torch_dtype(self.engine.get_tensor_dtype(t)) for t in tensors}

    def run(self, feeds: dict[str, torch.Tensor], stream: torch.cuda.Stream) -> dict[str, torch.Tensor]:
        """Enqueue one execution on `stream` (no sync). Outputs are allocated for this call's shapes."""
        for name in self.inputs:
            x = feeds[name]
            if x.dtype != self.dtypes[name] or not x.is_contiguous():
                x = feeds[name] = x.to(self.dtypes[name]).contiguous()
            self.context.set_input_shape(name, tuple(x.shape))
            self.context.set_tensor_address(name, x.data_ptr())
        out = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            out[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
            self.context.set_tensor_address(name, out[name].data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        return out


class TrtRunner:
    """vision.engine, prefill.engine, decode.engine on one CUDA stream. The KV cache stays on the GPU."""

    def __init__(self, directory: str | Path, shapes: GraphShapes, device: str = "cuda", name: str = "tensorrt"):
        import tensorrt as trt

        directory = Path(directory)
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(device=self.device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        self.graphs = {g: TrtGraph(runtime, directory / f, self.device) for g, f in names.ENGINE_FILES.items()}
        self.shapes, self.image_tokens = shapes, shapes.image_tokens
        # the decode state: [rope_delta (Qwen)], past_*.i, [cross_*.i (encoder-decoder, passed along unchanged)]
        self._state = names.decode_inputs(shapes.layers, shapes.mrope, shapes.encoder_decoder)[1:]
        self._head = 1 if shapes.mrope else 0
        self._present = names.present_names(shapes.layers)
        self._cross = names.cross_names(shapes.layers) if shapes.encoder_decoder else []
        self.name = name

    def _run(self, graph: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.cuda.stream(self.stream):  # buffers are made and used on this stream only
            return self.graphs[graph].run(feeds, self.stream)

    def encode(self, pixel_values, qformer_text=None) -> torch.Tensor:
        with torch.cuda.stream(self.stream):
            feeds = {names.PIXEL_VALUES: pixel_values.to(self.device, torch.float32, non_blocking=True)}
            if self.shapes.qformer_text_max:  # InstructBLIP: (qformer_input_ids, qformer_attention_mask) (1, Q)
                for name, x in zip((names.QFORMER_INPUT_IDS, names.QFORMER_ATTENTION_MASK), qformer_text, strict=True):
                    feeds[name] = x.to(self.device, torch.int64, non_blocking=True)
        return self._run("vision", feeds)[names.IMAGE_FEATURES]  # (N, E)

    def prefill(self, input_ids, image_features: torch.Tensor, rope=None):
        head = []  # the decode state's inputs before the cache (Qwen2.5-VL: rope_delta)
        with torch.cuda.stream(self.stream):
            feeds = {names.INPUT_IDS: input_ids.to(self.device, torch.int64, non_blocking=True),
                     names.IMAGE_FEATURES: image_features}
            if self.shapes.mrope:
                positions, delta = rope
                feeds[names.POSITION_IDS] = positions.to(self.device, torch.int64, non_blocking=True)  # (3, S)
                head = [torch.full((1,), delta, dtype=torch.int64, device=self.device)]
        out = self._run("prefill", feeds)
        return self._finish(out, head, [out[n] for n in self._cross])

    def step(self, token_id: int, state: list[torch.Tensor]):
        with torch.cuda.stream(self.stream):
            ids = torch.full((1, 1), token_id, dtype=torch.int64, device=self.device)
        out = self._run("decode", {names.INPUT_IDS: ids, **dict(zip(self._state, state, strict=True))})
        # rope_delta and the cross K / V stay as they are
        return self._finish(out, state[: self._head], state[self._head + len(self._present):])

    def _finish(self, out: dict[str, torch.Tensor], head: list[torch.Tensor], tail: list[torch.Tensor]):
        with torch.cuda.stream(self.stream):
            logits = out[names.LOGITS][0].float()  # (V,)
        self.stream.synchronize()  # the caller reads the next token on the host right away
        return logits, [*head, *(out[n] for n in self._present), *tail]


class TensorRTEngine(GraphEngine):
    def __init__(self, adapter, directory: str | Path, shapes: GraphShapes, device: str = "cuda",
                 name: str = "tensorrt", vision_cache_size: int = 4):
        super().__init__(adapter, TrtRunner(directory, shapes, device, name), vision_cache_size)

