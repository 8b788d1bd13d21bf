"""Which backend runs the model: node parameters in, a ready Pipeline out (ROS-free, one place).

Each backend is one function `(settings, log) -> (Pipeline, description)`; the description is what
diagnostics show as the backend (for example "torch (cuda, float16)"). A fallback is always logged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vlm_ros.pipeline import Pipeline

Log = Callable[[str], None]


@dataclass
class BackendSettings:
    """The node parameters that choose and configure a backend."""

    backend: str = "auto"  # auto | torch | onnxruntime | tensorrt | remote
    model: str = ""  # local model directory; '' = the embedded default model
    family: str = "auto"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16
    extra: dict[str, Any] = field(default_factory=dict)  # backend-specific parameters, by name


def resolve_device(device: str, dtype: str) -> tuple[str, str]:
    """('auto', 'auto') -> ('cuda', 'float16') where CUDA works, else ('cpu', 'float32')."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "float16" if device.startswith("cuda") else "float32"
    return device, dtype


def torch_pipeline(settings: BackendSettings, log: Log) -> tuple[Pipeline, str]:
    import torch

    from vlm_ros.models.registry import load_adapter

    device, dtype = resolve_device(settings.device, settings.dtype)
    log(f"loading {settings.model or 'the embedded default model'} (family {settings.family}) on {device} "
        f"as {dtype} ...")
    t0 = time.monotonic()
    adapter = load_adapter(settings.model, settings.family, device, getattr(torch, dtype))
    log(f"loaded {adapter.family} model in {time.monotonic() - t0:.1f} s")
    if settings.extra.get("quantize", "none") == "int8":
        from vlm_ros.quantize import quantize_decoder_int8

        log(f"int8 weights: {quantize_decoder_int8(adapter.model)} decoder linear layers")
        return Pipeline(adapter), f"torch ({device}, {dtype}, int8 decoder weights)"
    return Pipeline(adapter), f"torch ({device}, {dtype})"


def _model_dir(settings: BackendSettings):
    from pathlib import Path

    from vlm_ros.models.registry import default_model_dir

    return Path(settings.model) if settings.model else default_model_dir()


def _engine_settings(settings: BackendSettings) -> tuple:
    """(engines root, engine_policy) from the backend-specific parameters."""
    from vlm_ros.export.manifest import engines_dir

    return engines_dir(settings.extra.get("engines_dir", "")), settings.extra.get("engine_policy", "rebuild")


def export_image_size(settings: BackendSettings) -> tuple[int, int]:
    """(H, W) of the camera frames an idefics3 / qwen2_5_vl export is made for (engine_image_height/width)."""
    from vlm_ros.export.onnx_export import DEFAULT_IMAGE_SIZE

    return (int(settings.extra.get("engine_image_height", DEFAULT_IMAGE_SIZE[0])),
            int(settings.extra.get("engine_image_width", DEFAULT_IMAGE_SIZE[1])))


def onnxruntime_pipeline(settings: BackendSettings, log: Log) -> tuple[Pipeline, str]:
    """The model exported to ONNX (once, cached under engines_dir) and run by onnxruntime; float32 graphs."""
    import onnxruntime as ort

    from vlm_ros.engine.onnx_engine import OnnxEngine
    from vlm_ros.export.onnx_export import ensure_export
    from vlm_ros.models.registry import load_adapter

    providers = ["CPUExecutionProvider"]
    if settings.device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError(f"backend onnxruntime with device {settings.device}: this onnxruntime has no CUDA "
                               f"provider (has {ort.get_available_providers()}); use device cpu or auto")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if settings.dtype not in ("auto", "float32"):
        log(f"backend onnxruntime: the exported graphs are float32; dtype {settings.dtype} is not used")
    model_dir = _model_dir(settings)
    root, policy = _engine_settings(settings)
    log(f"loading {model_dir} (family {settings.family}) for onnxruntime ...")
    adapter = load_adapter(settings.model, settings.family, "cpu")  # processor, tokenizer, and the export source
    directory, shapes = ensure_export(adapter, model_dir, root, policy, log, export_image_size(settings))
    engine = OnnxEngine(adapter, directory, shapes, providers=providers, threads=int(settings.extra.get("cpu_threads", 0)))
    return Pipeline(adapter, engine), f"{engine.runner.name}, float32, {directory.name}"


def tensorrt_pipeline(settings: BackendSettings, log: Log) -> tuple[Pipeline, str]:
    """TensorRT engines built from the ONNX export (cached under engines_dir, keyed by GPU and TensorRT)."""
    from vlm_ros.engine.tensorrt_engine import tensorrt_pipeline as build

    return build(settings, _model_dir(settings), *_engine_settings(settings), log)


def auto_backend() -> tuple[str, str]:
    """(backend, reason) for backend auto: TensorRT where importable and CUDA works, else torch."""
    import importlib.util

    import torch

    if importlib.util.find_spec("tensorrt") is None:
        return "torch", "TensorRT is not installed"
    if not torch.cuda.is_available():
        return "torch", "no CUDA device for TensorRT"
    return "tensorrt", "TensorRT and CUDA present"


def remote_pipeline(settings: BackendSettings, log: Log) -> tuple[Pipeline, str]:
    """An OpenAI-compatible server (vLLM, SGLang, ...) runs the model; `remote.*` parameters in settings.extra."""
    from vlm_ros.engine.remote import RemoteConfig, RemoteEngine
    from vlm_ros.models.remote import RemoteAdapter

    params = {k.removeprefix("remote."): v for k, v in settings.extra.items() if k.startswith("remote.")}
    adapter = RemoteAdapter(params.pop("family", "embedded"), params.pop("image_format", "jpeg"),
                            int(params.pop("jpeg_quality", 90)), int(params.pop("max_image_side", 0)))
    engine = RemoteEngine(RemoteConfig.from_params(params))
    if not engine.config.verify_tls:
        log("remote: TLS certificate verification is OFF (remote.verify_tls false)")
    log(engine.probe())
    return Pipeline(adapter, engine), f"{engine.describe()}, family {adapter.family}"


BACKENDS: dict[str, Callable[[BackendSettings, Log], tuple[Pipeline, str]]] = {
    "remote": remote_pipeline,
    "torch": torch_pipeline,
    "onnxruntime": onnxruntime_pipeline,
    "tensorrt": tensorrt_pipeline,
}


def build_pipeline(settings: BackendSettings, log: Log) -> tuple[Pipeline, str]:
    """The Pipeline for `settings`; raises with a clear message when the backend cannot run here."""
    name = settings.backend
    if name == "auto":  # a fallback is logged and shown in the description (diagnostics)
        name, reason = auto_backend()
        if name == "tensorrt":
            try:
                return tensorrt_pipeline(settings, log)
            except Exception as exc:  # noqa: BLE001 -- any failure falls back, logged and shown in diagnostics
                reason = f"TensorRT failed: {type(exc).__name__}: {exc}"[:200]
        log(f"backend auto: {reason}; falling back to torch")
        pipeline, description = torch_pipeline(settings, log)
        return pipeline, f"{description} [auto fallback: {reason}]"
    if name not in BACKENDS:
        raise RuntimeError(f"backend '{name}' is not available in this build; choose one of {sorted(BACKENDS)}")
    return BACKENDS[name](settings, log)
