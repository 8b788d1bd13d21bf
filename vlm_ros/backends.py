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
    return Pipeline(adapter), f"torch ({device}, {dtype})"


BACKENDS: dict[str, Callable[[BackendSettings, Log], tuple[Pipeline, str]]] = {
    "torch": torch_pipeline,
}


def build_pipeline(settings: BackendSettings, log: Log) -> tuple[Pipeline, str]:
    """The Pipeline for `settings`; raises with a clear message when the backend cannot run here."""
    name = settings.backend
    if name == "auto":
        log("backend auto: TensorRT engines are not supported in this build; using torch")
        name = "torch"
    if name not in BACKENDS:
        raise RuntimeError(f"backend '{name}' is not available in this build; choose one of {sorted(BACKENDS)}")
    return BACKENDS[name](settings, log)
