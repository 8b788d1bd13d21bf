"""How much memory a model needs before it is loaded, how much the machine has, and whether it fits (ROS-free).

`estimate(model_dir, ...)` reads only config.json, the processor configs and the safetensors headers (shapes
and dtypes; no tensor is loaded): weights at the chosen dtype (decoder linear layers at one byte plus a scale
per row with `quantize="int8"`, half a byte plus a scale and zero per group with "int4"), the KV cache for the
context, the vision encoder's activations for the camera frame size, the decoder's prefill activations, and the
runtime's own memory (a per-backend constant, measured).
`available_bytes(device)` is CUDA free memory on a discrete GPU, MemAvailable on Jetson (one memory for CPU and
GPU) and on the CPU. `admit(...)` compares both and, when the model does not fit, names the settings that would.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 2**20

# Bytes per element of the dtypes a model runs in and of safetensors' dtype names.
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                     "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
QUANTIZE_CHOICES = ("none", "int8", "int4")
INT8_SCALE_BYTES = 2  # one bfloat16 scale per output row (vlm_ros/quantize.py)
INT4_GROUPS = (128, 64, 32)  # int4: a bf16 scale and zero per group of this many inputs (the largest that divides)

# The runtime's own memory: RSS of a process that imported torch, transformers and vlm_ros, loaded the embedded
# model (17.6 MB of weights) and answered one query, minus those weights and its KV cache. Measured on the
# project's x86_64 CPU machine (torch 2.13 CPU, transformers 5.24): 456 MiB peak RSS -> 440 MiB. Not included:
# rclpy and the Fast DDS participant of the node (not measured separately; the margin covers them). The CUDA
# context is not measured (no GPU was lent when this was written): the CUDA figure is an assumption, and the
# table says so.
RUNTIME_OVERHEAD = {"cpu": 440 * MiB, "cuda": 1024 * MiB}
OVERHEAD_MEASURED = {"cpu": True, "cuda": False}

# Decoder linear weights (what `quantize: int8` packs): 2-D tensors of a text model's numbered layers.
_TEXT_LAYER = re.compile(r"(^|\.)(language_model|text_model|model)(\.model)?\.layers\.\d+\.")
_VISION = re.compile(r"vision|visual|image|vit|patch", re.IGNORECASE)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors name (F32, BF16, ...)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class ImageGeometry:
    """What the vision encoder sees for one camera frame: encoder images, patches per image, tokens to the decoder."""

    images: int
    patches: int  # per encoder image
    tokens: int  # image tokens in the prompt


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a model needs, by part, for the settings it was made for."""

    model_dir: str
    family: str
    device: str  # cpu | cuda
    dtype: str
    quantize: str
    max_tokens: int
    image_size: tuple[int, int]  # (H, W) of the camera frame
    weights: int
    kv_cache: int
    vision_activations: int
    decoder_activations: int
    runtime_overhead: int
    image: ImageGeometry
    loading_weights: int = 0  # int8: the weights at dtype, held while loading before they are packed
    notes: tuple[str, ...] = ()

    @property
    def running(self) -> int:
        return (self.weights + self.kv_cache + self.vision_activations + self.decoder_activations
                + self.runtime_overhead)

    @property
    def loading(self) -> int:
        return self.loading_weights + self.runtime_overhead

    @property
    def total(self) -> int:
        """The peak: while answering, or while loading when the unpacked weights are larger."""
        return max(self.running, self.loading)

    def rows(self) -> list[tuple[str, int]]:
        """(what, bytes) for a table."""
        packed = f", {self.quantize} decoder linears" if self.quantize != "none" else ""
        return [(f"weights ({self.dtype}{packed})", self.weights),
                (f"KV cache ({self.max_tokens} tokens)", self.kv_cache),
                (f"vision activations ({self.image.images} x {self.image.patches} patches, {self.image.tokens} "
                 f"image tokens, frame {self.image_size[1]}x{self.image_size[0]})", self.vision_activations),
                ("decoder prefill activations", self.decoder_activations),
                (f"runtime overhead ({self.device}{'' if OVERHEAD_MEASURED[self.device] else ', not measured'})",
                 self.runtime_overhead),
                *([("running (the sum above)", self.running),
                   (f"loading peak (weights at {self.dtype} before {self.quantize} packing + runtime)", self.loading)]
                  if self.loading_weights else []),
                ("total (the larger of running and loading)" if self.loading_weights else "total", self.total)]

    def table(self) -> str:
        width = max(len(what) for what, _ in self.rows())
        lines = [f"{self.model_dir} (family {self.family})", f"{'what':<{width}}  {'bytes':>15}  {'MiB':>9}"]
        lines += [f"{what:<{width}}  {n:>15,}  {n / MiB:>9.1f}" for what, n in self.rows()]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


# --- reading a model directory without loading it ----------------------------------------------------------------
def read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in model directory '{model_dir}'")
    return json.loads(path.read_text())


def safetensors_tensors(model_dir: Path) -> list[TensorInfo]:
    """Every tensor's name, shape and dtype from the safetensors headers (8-byte length + JSON); no data is read."""
    files = sorted(model_dir.glob("*.safetensors"))
    tensors = []
    for path in files:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100 * MiB:
                raise ValueError(f"'{path}': safetensors header of {length} bytes: not a safetensors file")
            header = json.loads(f.read(length))
        tensors += [TensorInfo(name, tuple(info["shape"]), info["dtype"])
                    for name, info in header.items() if name != "__metadata__"]
    return tensors


def meta_tensors(model_dir: Path, family: str) -> list[TensorInfo]:
    """Parameters of the model built on the meta device from its config (no memory), for directories without
    safetensors files (e.g. pytorch_model.bin only)."""
    import torch
    from transformers import AutoConfig

    from vlm_ros.models.registry import adapter_class

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    with torch.device("meta"):
        model = adapter_class(family).model_class(config)
    seen, tensors = set(), []
    for name, p in model.named_parameters():  # tied parameters are listed once
        if id(p) not in seen:
            seen.add(id(p))
            tensors.append(TensorInfo(name, tuple(p.shape), "F32"))
    return tensors


def is_decoder_linear(tensor: TensorInfo) -> bool:
    """A text decoder layer's 2-D weight (attention and MLP projections): what int8 quantisation packs."""
    return (len(tensor.shape) == 2 and tensor.name.endswith(".weight") and bool(_TEXT_LAYER.search(tensor.name))
            and not _VISION.search(tensor.name) and "norm" not in tensor.name)


def weight_bytes(tensors: list[TensorInfo], dtype: str, quantize: str = "none") -> int:
    """Bytes of the weights once loaded as `dtype` (floating tensors; integer ones keep their size)."""
    total = 0
    for t in tensors:
        if quantize == "int8" and is_decoder_linear(t):
            total += t.numel + t.shape[0] * INT8_SCALE_BYTES
        elif quantize == "int4" and is_decoder_linear(t):
            group = next((g for g in INT4_GROUPS if t.shape[1] % g == 0), t.shape[1])
            total += t.numel // 2 + (t.numel // group) * 2 * 2
        elif t.dtype.startswith(("F", "BF")):
            total += t.numel * DTYPE_BYTES[dtype]
        else:
            total += t.numel * SAFETENSORS_BYTES.get(t.dtype, 4)
    return total


def _text_config(config: dict) -> dict:
    return config.get("text_config") or config.get("decoder") or config


def _vision_config(config: dict) -> dict:
    return config.get("vision_config") or {}


def _processor_config(model_dir: Path) -> dict:
    """preprocessor_config.json and processor_config.json merged (the image processor may be nested in the latter)."""
    merged: dict = {}
    for name in ("processor_config.json", "preprocessor_config.json"):
        path = model_dir / name
        if path.is_file():
            data = json.loads(path.read_text())
            merged.update(data.get("image_processor", {}))
            merged.update({k: v for k, v in data.items() if k != "image_processor"})
    return merged


def _per_stage(value, pick) -> int:
    """A vision config value that is one number, or one per stage (Florence-2's DaViT): `pick` of the stages."""
    return int(pick(value) if isinstance(value, (list, tuple)) else value)


def image_geometry(family: str, config: dict, processor: dict, height: int, width: int) -> ImageGeometry:
    """Encoder images, patches per image and prompt image tokens for one frame (the adapters' own arithmetic)."""
    vision = _vision_config(config)
    patch = _per_stage(vision.get("patch_size", 14), min)
    if family in ("qwen2_5_vl", "qwen3_vl"):
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        patch = int(processor.get("patch_size", patch))
        merge = int(processor.get("merge_size", vision.get("spatial_merge_size", 2)))
        size = processor.get("size") or {}
        min_pixels = int(processor.get("min_pixels", size.get("shortest_edge", 56 * 56)))
        max_pixels = int(processor.get("max_pixels", size.get("longest_edge", 28 * 28 * 1280)))
        h, w = smart_resize(height, width, factor=patch * merge, min_pixels=min_pixels, max_pixels=max_pixels)
        patches = (h // patch) * (w // patch)
        return ImageGeometry(1, patches, patches // merge**2)
    if family == "idefics3":
        from vlm_ros.models.idefics3 import idefics3_input_size

        tile = int((processor.get("max_image_size") or {}).get("longest_edge", vision.get("image_size", 512)))
        longest = (processor.get("size") or {}).get("longest_edge")
        h, w = idefics3_input_size(height, width, longest_edge=longest, tile=tile,
                                   do_image_splitting=bool(processor.get("do_image_splitting", True)))
        tiles = (h // tile) * (w // tile)
        images = tiles + 1 if tiles > 1 else 1  # the tiles and the whole image
        seq = int(processor.get("image_seq_len") or (tile // patch) ** 2 // int(config.get("scale_factor", 4)) ** 2)
        return ImageGeometry(images, (tile // patch) ** 2, images * seq)
    if family == "florence2":
        return ImageGeometry(1, (768 // 32) ** 2, int(config.get("image_seq_length", 577)))
    image_size = _per_stage(vision.get("image_size", 224), max)
    patches = (image_size // patch) ** 2
    if family in ("blip2", "instructblip"):
        return ImageGeometry(1, patches + 1, int(config.get("num_query_tokens", 32)))
    tokens = int(config.get("image_seq_length") or _text_config(config).get("image_seq_length") or patches)
    return ImageGeometry(1, patches + (1 if vision.get("model_type", "").startswith("clip") else 0), tokens)


def vision_activation_bytes(config: dict, geometry: ImageGeometry, dtype_bytes: int, family: str = "") -> int:
    """Peak activations of one vision-encoder forward (inference: one layer's tensors live at a time).

    Per encoder image: the residual stream, q/k/v and the attention output (5 x hidden), the MLP's intermediate
    twice (input and activation) and one head's attention scores at a time are alive together (sdpa on CPU);
    beside them the processor's float32 pixels and their copy in the model's dtype. Idefics3 (SmolVLM) also holds
    its int64 pixel mask and copies of the mask and of the pixels (transformers' get_image_features drops padding
    tiles by indexing, which copies both): 16 + dtype bytes more per pixel, 13 tiles at 640x480. Florence-2's DaViT
    works in stages of falling resolution and rising width: its peak is the largest stage's (the first: 192 x 192
    tokens of 128 channels on a 768-px image), not the last stage's patches.
    """
    vision = _vision_config(config)
    hidden = _per_stage(vision.get("hidden_size", vision.get("embed_dim", 768)), max)
    inter = _per_stage(vision.get("intermediate_size", 4 * hidden), max)
    p = geometry.patches
    pixels = p * _per_stage(vision.get("patch_size", 14), min) ** 2 * 3 * int(vision.get("temporal_patch_size", 1))
    per_image = p * (5 * hidden + 2 * inter) + p * p
    if family == "florence2":  # per stage: tokens x (5 x width + 2 x MLP width); windowed attention scores are small
        side, ratio, per_image = 768, float(vision.get("mlp_ratio", 4.0)), 0
        for width, stride in zip(vision.get("embed_dim", ()), vision.get("patch_stride", ()), strict=True):
            side //= int(stride)
            per_image = max(per_image, side * side * (5 * int(width) + 2 * int(ratio * width)))
    pixel_bytes = pixels * (4 + dtype_bytes)
    if family == "idefics3":  # the int64 pixel mask (one value per pixel, not per channel) twice, the pixels again
        pixel_bytes += (pixels // 3) * 2 * 8 + pixels * dtype_bytes
    return geometry.images * (per_image * dtype_bytes + pixel_bytes)


def is_encoder_decoder(text: dict) -> bool:
    """A BART-style text model (Florence-2): an encoder over image + prompt tokens and a decoder that attends to it."""
    return "decoder_layers" in text and "d_model" in text


def decoder_activation_bytes(text: dict, prompt_tokens: int, dtype_bytes: int) -> int:
    """Peak activations of the prefill over the prompt (an encoder-decoder's encoder pass; one layer at a time;
    logits of the last position only)."""
    hidden = int(text.get("hidden_size") or text.get("d_model", 768))
    inter = int(text.get("intermediate_size") or text.get("encoder_ffn_dim", 4 * hidden))
    return prompt_tokens * (5 * hidden + 2 * inter) * dtype_bytes + int(text.get("vocab_size", 0)) * 4


def kv_cache_bytes(text: dict, tokens: int, dtype_bytes: int, encoder_tokens: int = 0) -> int:
    """layers x 2 (K and V) x KV heads x head dim x tokens x bytes. An encoder-decoder's decoder layers hold this
    for their self-attention over `tokens` and for their cross-attention over the `encoder_tokens`."""
    if is_encoder_decoder(text):
        heads = int(text.get("decoder_attention_heads", 1))
        layers, head_dim = int(text["decoder_layers"]), int(text["d_model"]) // heads
        return layers * 2 * heads * head_dim * (tokens + encoder_tokens) * dtype_bytes
    heads = int(text.get("num_attention_heads", 1))
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or int(text.get("hidden_size", 0)) // heads)
    layers = int(text.get("num_hidden_layers", text.get("num_layers", 0)))
    return layers * 2 * kv_heads * head_dim * tokens * dtype_bytes


def kv_buffer_tokens(max_tokens: int, minimum: int = 512) -> int:
    """Tokens the torch engine's KV buffer holds for a context of max_tokens (TorchEngine._buffer_len)."""
    return max(minimum, 1 << (max_tokens - 1).bit_length())


def estimate(model_dir: str | Path = "", *, dtype: str = "auto", device: str = "cpu", quantize: str = "none",
             max_tokens: int = 1024, image_size: tuple[int, int] = (480, 640), family: str = "auto") -> MemoryEstimate:
    """The memory a model directory needs with these settings ('' = the embedded default model)."""
    from vlm_ros.models.registry import default_model_dir, detect_family

    path = Path(model_dir) if str(model_dir) else default_model_dir()
    device = "cuda" if device.startswith("cuda") else "cpu"
    dtype = ("float16" if device == "cuda" else "float32") if dtype == "auto" else dtype
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {sorted(DTYPE_BYTES)} or auto; got '{dtype}'")
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize must be one of {QUANTIZE_CHOICES}; got '{quantize}'")
    family = detect_family(path) if family == "auto" else family
    config = read_config(path)
    tensors = safetensors_tensors(path)
    notes = []
    if not tensors:
        tensors = meta_tensors(path, family)
        notes.append("no safetensors files: parameter counts from the model built on the meta device")
    size = DTYPE_BYTES[dtype]
    text = _text_config(config)
    geometry = image_geometry(family if family != "embedded" else "llava", config, _processor_config(path),
                              *image_size)
    if is_encoder_decoder(text):  # generate() with a growing cache: the answer's tokens + the encoder's, per layer
        prompt_tokens = geometry.tokens + 64  # image tokens and the task prompt, the encoder's input
        kv = kv_cache_bytes(text, max_tokens, size, encoder_tokens=prompt_tokens)
        notes.append(f"KV cache: encoder-decoder: decoder self-attention over {max_tokens} tokens and cross-attention "
                     f"over {prompt_tokens} encoder tokens")
    else:
        buffer_tokens = kv_buffer_tokens(max_tokens)
        prompt_tokens = min(geometry.tokens + 64, max_tokens)  # image tokens and a short instruction
        # the prefill's own cache (prompt) exists beside the engine's buffer, which it is copied into
        kv = kv_cache_bytes(text, buffer_tokens + prompt_tokens, size)
        if buffer_tokens != max_tokens:
            notes.append(f"KV cache: the torch engine's buffer is {buffer_tokens} tokens for a context of {max_tokens} "
                         "(a power of two, at least 512), plus the prefill's cache of the prompt")
    return MemoryEstimate(
        model_dir=str(path), family=family, device=device, dtype=dtype, quantize=quantize, max_tokens=max_tokens,
        image_size=tuple(image_size), weights=weight_bytes(tensors, dtype, quantize), kv_cache=kv,
        vision_activations=vision_activation_bytes(config, geometry, size, family),
        decoder_activations=decoder_activation_bytes(text, prompt_tokens, size),
        runtime_overhead=RUNTIME_OVERHEAD[device], image=geometry,
        loading_weights=weight_bytes(tensors, dtype) if quantize != "none" else 0, notes=tuple(notes))


def release_free_memory() -> None:
    """Return freed heap pages to the OS (glibc malloc_trim): after a model is unloaded or its weights replaced
    (int8 packing), the freed memory shows as available and later allocations do not add to the peak."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


# --- what the machine has -----------------------------------------------------------------------------------------
AVAILABLE_OVERRIDE_ENV = "VLM_ROS_TEST_AVAILABLE_MB"  # tests only: pretend this many MiB are available


@dataclass(frozen=True)
class Available:
    bytes: int
    source: str  # where the figure comes from


def is_jetson() -> bool:
    return platform.machine() == "aarch64" and Path("/etc/nv_tegra_release").exists()


def meminfo_available(path: str = "/proc/meminfo") -> int:
    """MemAvailable (bytes) from /proc/meminfo."""
    with open(path) as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no MemAvailable in {path}")


def available_bytes(device: str = "cpu") -> Available:
    """Memory the model may use: CUDA free memory on a discrete GPU, else (Jetson, CPU) MemAvailable.

    The environment variable VLM_ROS_TEST_AVAILABLE_MB replaces the figure; it exists for tests only.
    """
    override = os.environ.get(AVAILABLE_OVERRIDE_ENV, "")
    if override:
        return Available(int(float(override) * MiB), f"{AVAILABLE_OVERRIDE_ENV} (test override)")
    if device.startswith("cuda") and not is_jetson():
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return Available(int(free), f"CUDA free memory on {device}")
    return Available(meminfo_available(), "MemAvailable (/proc/meminfo)" + (", shared CPU/GPU" if is_jetson() else ""))


# --- admission ------------------------------------------------------------------------------------------------------
class MemoryAdmissionError(RuntimeError):
    """The model would not fit: the figures and the settings that would."""


@dataclass(frozen=True)
class Admission:
    estimate: MemoryEstimate
    available: Available
    margin: int
    fits: bool
    suggestions: tuple[str, ...] = field(default=())
    device: str = "cpu"  # as configured (cuda:N names the GPU whose memory counts)

    def message(self) -> str:
        e, a = self.estimate, self.available
        head = (f"model needs an estimated {e.total / MiB:.0f} MiB (weights {e.weights / MiB:.0f}, KV cache "
                f"{e.kv_cache / MiB:.0f} for {e.max_tokens} tokens, activations "
                f"{(e.vision_activations + e.decoder_activations) / MiB:.0f}, runtime {e.runtime_overhead / MiB:.0f}; "
                f"{e.dtype}, quantize {e.quantize}) + margin {self.margin / MiB:.0f} MiB; available "
                f"{a.bytes / MiB:.0f} MiB ({a.source})")
        if self.fits:
            return head + ": fits"
        fix = ("; would fit: " + " or ".join(self.suggestions)) if self.suggestions else "; no smaller setting fits"
        return head + ": refused" + fix


def smaller_settings(model_dir: str | Path, base: MemoryEstimate, budget: int) -> list[str]:
    """Settings that would fit `budget` bytes: a lower precision, int8 decoder weights, a shorter context."""
    def total(**changes) -> int:
        s = {"dtype": base.dtype, "device": base.device, "quantize": base.quantize, "max_tokens": base.max_tokens,
             "image_size": base.image_size, "family": base.family, **changes}
        return estimate(model_dir, **s).total

    out = []
    precisions = [("bfloat16", "none"), ("bfloat16", "int8")] if base.dtype == "float32" else [(base.dtype, "int8")]
    for dtype, quantize in precisions:
        if (dtype, quantize) != (base.dtype, base.quantize) and total(dtype=dtype, quantize=quantize) <= budget:
            out.append(f"dtype {dtype}" + (", quantize int8" if quantize == "int8" else ""))
            break
    tokens = base.max_tokens
    while tokens > 64:
        tokens //= 2
        if total(max_tokens=tokens) <= budget:
            out.append(f"engine_max_tokens {tokens}")
            break
    return out


def admit(model_dir: str | Path, estimate_: MemoryEstimate, available: Available, margin_bytes: int,
          device: str = "cpu") -> Admission:
    """Whether the estimate plus the margin fits what is available; with suggestions when not."""
    budget = available.bytes - margin_bytes
    fits = estimate_.total <= budget
    suggestions = () if fits else tuple(smaller_settings(model_dir, estimate_, budget))
    return Admission(estimate_, available, margin_bytes, fits, suggestions, device)


def check_fits(model_dir: str | Path, *, margin_mb: float, **settings) -> Admission:
    """Estimate, compare with what this machine has, raise MemoryAdmissionError when it does not fit."""
    est = estimate(model_dir, **settings)
    device = settings.get("device", "cpu")  # the estimate keeps only cpu | cuda; the index says which GPU
    admission = admit(model_dir, est, available_bytes(device), int(margin_mb * MiB), device)
    if not admission.fits:
        raise MemoryAdmissionError(admission.message())
    return admission


def node_admission(param: Callable[[str], Any], log: Callable[[str], None]) -> Admission | None:
    """The configure-time check for the node's parameters (`param(name)` reads one); None when it does not apply
    (memory_check false, backend remote). Raises MemoryAdmissionError with the figures when the model does not fit.
    """
    backend = param("backend")
    if not param("memory_check") or backend == "remote":
        return None
    device, dtype = param("device"), param("dtype")
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if backend == "onnxruntime":  # float32 graphs, no int8 layers
        dtype, quantize = "float32", "none"
    else:
        quantize = param("quantize") if backend in ("torch", "auto") else "none"
    admission = check_fits(param("model"), margin_mb=param("memory_margin_mb"), dtype=dtype, device=device,
                           quantize=quantize, max_tokens=param("engine_max_tokens"), family=param("family"),
                           image_size=(param("engine_image_height"), param("engine_image_width")))
    log(admission.message())
    return admission


def diagnostic_values(admission: Admission | None) -> dict[str, str]:
    """Estimate and available memory (at the last configure) and what the process uses now, MiB."""
    if admission is None:
        return {"memory_estimate_mb": "", "memory_available_mb": "", "memory_actual_mb": ""}
    actual = float("nan")
    if admission.estimate.device == "cuda" and not is_jetson():
        import torch

        actual = torch.cuda.max_memory_allocated(torch.device(admission.device)) / MiB
    else:
        with open("/proc/self/statm") as f:
            actual = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MiB
    return {"memory_estimate_mb": f"{admission.estimate.total / MiB:.0f}",
            "memory_available_mb": f"{admission.available.bytes / MiB:.0f}",
            "memory_actual_mb": f"{actual:.0f}"}
