"""Which backend runs the model: node parameters in, a ready Pipeline out (ROS-free, one place).

Each backend is one function `(settings, log) -> (Pipeline, description)`; the description is what
diagnostics show as the backend (for example "torch (cuda, float16)"). A fallback is always logged. A backend
that is not the eager float32 reference is self-checked against it before it serves (`check_before_serving`).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vlm_ros.engine.remote import RemoteConfig
from vlm_ros.engine.self_check import SelfCheckResult
from vlm_ros.export import DEFAULT_IMAGE_SIZE
from vlm_ros.grounding import Grounder, GroundingSettings
from vlm_ros.pipeline import Pipeline

Log = Callable[[str], None]


@dataclass
class RemoteSettings(RemoteConfig):
    """`remote.*`: the server (RemoteConfig) and how frames are sent and answers read (RemoteAdapter)."""

    family: str = "embedded"  # vlm_ros.models.remote.FAMILIES: how tasks are phrased and boxes read
    image_format: str = "jpeg"  # jpeg | png
    jpeg_quality: int = 90
    max_image_side: int = 0  # downscale sent frames to this longer side; 0 = source size


@dataclass
class BackendSettings:
    """The node parameters that choose and configure a backend, by the same names; their defaults are these."""

    backend: str = "auto"  # auto | torch | onnxruntime | tensorrt | remote
    model: str = ""  # local model directory; '' = the embedded default model
    family: str = "auto"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16
    engines_dir: str = ""  # onnxruntime / tensorrt cache; '' = the default folder (export/manifest.py)
    engine_policy: str = "rebuild"  # reuse | rebuild | refuse
    precision: str = "fp16"  # TensorRT: fp16 | fp32 | int8 | fp8
    engine_max_tokens: int = 1024  # TensorRT shape profile: most prompt + generated tokens
    quantize: str = "none"  # backend torch: none | int8 | int4 (the text decoder's linear layers, int4 on CPU only)
    dla_core: int = -1  # Jetson DLA core; -1 = GPU only
    engine_image_height: int = DEFAULT_IMAGE_SIZE[0]  # idefics3 / qwen2_5_vl exports: the camera frame size
    engine_image_width: int = DEFAULT_IMAGE_SIZE[1]
    cpu_threads: int = 1  # torch / onnxruntime intra-op threads; 0 = one per core
    self_check: bool = True  # probe a non-reference backend against the eager float32 reference before serving
    remote: RemoteSettings = field(default_factory=RemoteSettings)

    @classmethod
    def from_params(cls, get: Callable[[str], Any]) -> BackendSettings:
        """From a getter of parameter values by name (the node's); `remote.<name>` for the remote ones."""
        remote = RemoteSettings(**{f.name: get(f"remote.{f.name}") for f in fields(RemoteSettings)})
        return cls(**{f.name: get(f.name) for f in fields(cls) if f.name != "remote"}, remote=remote)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every setting's default by parameter name (the node's parameter table takes its defaults from here)."""
        default = cls()
        out = {f.name: getattr(default, f.name) for f in fields(cls) if f.name != "remote"}
        out.update({f"remote.{f.name}": getattr(default.remote, f.name) for f in fields(RemoteSettings)})
        return out

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the camera frames an idefics3 / qwen2_5_vl export is made for."""
        return self.engine_image_height, self.engine_image_width

    @property
    def model_dir(self) -> Path:
        from vlm_ros.models.registry import default_model_dir

        return Path(self.model) if self.model else default_model_dir()

    @property
    def engines_root(self) -> Path:
        from vlm_ros.export.manifest import engines_dir

        return engines_dir(self.engines_dir)


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
    if settings.quantize != "none":
        from vlm_ros.quantize import quantize_decoder

        log(f"{settings.quantize} weights: {quantize_decoder(adapter.model, settings.quantize)} decoder linear layers")
        return Pipeline(adapter), f"torch ({device}, {dtype}, {settings.quantize} decoder weights)"
    return Pipeline(adapter), f"torch ({device}, {dtype})"


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
    log(f"loading {settings.model_dir} (family {settings.family}) for onnxruntime ...")
    adapter = load_adapter(settings.model, settings.family, "cpu")  # processor, tokenizer, and the export source
    directory, shapes = ensure_export(adapter, settings.model_dir, settings.engines_root, settings.engine_policy, log,
                                      settings.image_size)
    engine = OnnxEngine(adapter, directory, shapes, providers=providers, threads=settings.cpu_threads)
    return Pipeline(adapter, engine), f"{engine.runner.name}, float32, {directory.name}"


def tensorrt_pipeline(settings: BackendSettings, log: Log) -> tuple[Pipeline, str]:
    """TensorRT engines built from the ONNX export (cached under engines_dir, keyed by GPU and TensorRT). Raises
    when TensorRT or CUDA is missing, with the reason (backend auto logs it and falls back)."""
    import importlib.util

    import torch

    from vlm_ros.engine.tensorrt_engine import TensorRTEngine
    from vlm_ros.export.tensorrt_build import ensure_engines
    from vlm_ros.models.registry import load_adapter

    if importlib.util.find_spec("tensorrt") is None:
        raise RuntimeError("backend tensorrt: the tensorrt Python module is not installed (on Jetson it comes "
                           "with JetPack: python3-libnvinfer; elsewhere: pip install tensorrt)")
    if not torch.cuda.is_available():
        raise RuntimeError("backend tensorrt: no CUDA device")
    device = settings.device if settings.device.startswith("cuda") else "cuda"
    log(f"loading {settings.model_dir} (family {settings.family}) for TensorRT ({settings.precision}) ...")
    adapter = load_adapter(settings.model, settings.family, "cpu")  # processor, tokenizer, and the export source
    directory, shapes, key = ensure_engines(adapter, settings.model_dir, settings.engines_root, settings.engine_policy,
                                            log, settings.precision, settings.engine_max_tokens, settings.dla_core,
                                            torch.device(device).index or 0, settings.image_size)
    name = f"tensorrt ({settings.precision}, {key['gpu']}, TensorRT {key['tensorrt']})"
    return Pipeline(adapter, TensorRTEngine(adapter, directory, shapes, device, name)), f"{name}, {directory.name}"


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
    """An OpenAI-compatible server (vLLM, SGLang, ...) runs the model; `settings.remote` says which and how."""
    from vlm_ros.engine.remote import RemoteEngine
    from vlm_ros.models.remote import RemoteAdapter

    remote = settings.remote
    adapter = RemoteAdapter(remote.family, remote.image_format, remote.jpeg_quality, remote.max_image_side)
    engine = RemoteEngine(remote)
    if not remote.verify_tls:
        log("remote: TLS certificate verification is OFF (remote.verify_tls false)")
    log(engine.probe())
    return Pipeline(adapter, engine), f"{engine.describe()}, family {adapter.family}"


BACKENDS: dict[str, Callable[[BackendSettings, Log], tuple[Pipeline, str]]] = {
    "remote": remote_pipeline,
    "torch": torch_pipeline,
    "onnxruntime": onnxruntime_pipeline,
    "tensorrt": tensorrt_pipeline,
}


def build_pipeline(settings: BackendSettings, log: Log, grounding: GroundingSettings | None = None
                   ) -> tuple[Pipeline, str]:
    """The Pipeline for `settings` with the grounding stage `grounding` names (detector, segmenter; loaded on the
    backend's device, torch); raises with a clear message when the backend or a grounding model cannot run here."""
    pipeline, description = _vlm_pipeline(settings, log)
    rules = getattr(pipeline.engine, "rules", None)
    if rules is not None:  # the checkpoint's generation config, as the engine applies it
        log(f"generation config rules: {rules.describe()}")
        for note in rules.notes:
            log(note)
    pipeline.self_check = check_before_serving(settings, pipeline, log)
    if grounding is not None:
        import torch

        device, dtype = resolve_device(settings.device, settings.dtype)
        pipeline.grounder = Grounder.load(grounding, device, getattr(torch, dtype), log)
    return pipeline, description


def self_check_kind(settings: BackendSettings, engine: Any) -> str | None:
    """What the self-check compares a built backend as (a key of engine.self_check.TOLERANCES); None for the
    reference itself (eager torch float32) and for a remote server (it decides how it computes)."""
    from vlm_ros.engine import TorchEngine
    from vlm_ros.engine.graph_engine import GraphEngine
    from vlm_ros.engine.onnx_engine import OnnxEngine

    if isinstance(engine, OnnxEngine):
        return "float32"
    if isinstance(engine, GraphEngine):  # TensorRT
        return {"fp32": "float32", "fp16": "float16"}.get(settings.precision, settings.precision)
    if isinstance(engine, TorchEngine):
        if settings.quantize != "none":  # int8, int4: a key of TOLERANCES each
            return settings.quantize
        dtype = resolve_device(settings.device, settings.dtype)[1]
        return None if dtype == "float32" else dtype
    return None


def check_before_serving(settings: BackendSettings, pipeline: Pipeline, log: Log) -> SelfCheckResult | None:
    """The self-check of a non-reference backend (engine/self_check.py): the result when it passed, None when
    not run; raises SelfCheckError with the figures when the backend is beyond tolerance."""
    import torch

    from vlm_ros.engine.self_check import SelfCheckError, run_self_check
    from vlm_ros.models.registry import load_adapter

    kind = self_check_kind(settings, pipeline.engine)
    if kind is None:
        return None
    if not settings.self_check:
        log(f"self-check off (self_check false): the {kind} backend is not compared with the float32 reference")
        return None
    reference = pipeline.adapter
    model = next(reference.model.parameters())
    if model.dtype != torch.float32 or model.device.type != "cpu" or settings.quantize != "none":
        unaffordable = _reference_unaffordable(settings)
        if unaffordable:
            pipeline.self_check_note = (f"self-check SKIPPED: {unaffordable}; the {kind} backend serves unchecked "
                                        "(self_check false silences this)")
            log(pipeline.self_check_note)
            return None
        log(f"self-check: loading the float32 reference of {settings.model_dir} on the CPU ...")
        reference = load_adapter(settings.model, settings.family, "cpu", torch.float32)
    result = run_self_check(pipeline.engine, pipeline.adapter, reference, kind, settings.image_size)
    if reference is not pipeline.adapter:  # the float32 copy was only for the check
        del reference
        gc.collect()
    log(result.summary())
    if not result.passed:
        raise SelfCheckError(result)
    return result


def _reference_unaffordable(settings: BackendSettings) -> str:
    """Why a float32 copy of the model on the CPU, for the self-check, would not fit the host memory now ('' when it
    fits): on a Jetson (one memory for CPU and GPU) or a small host, loading it could get the node killed."""
    from vlm_ros import memory

    need = memory.estimate(settings.model, dtype="float32", device="cpu", family=settings.family, max_tokens=64,
                           image_size=settings.image_size).total
    available = memory.available_bytes("cpu")
    if need <= available.bytes:
        return ""
    return (f"its float32 reference on the CPU needs an estimated {need / memory.MiB:.0f} MiB, "
            f"{available.bytes / memory.MiB:.0f} MiB available ({available.source})")


def _vlm_pipeline(settings: BackendSettings, log: Log) -> tuple[Pipeline, str]:
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
