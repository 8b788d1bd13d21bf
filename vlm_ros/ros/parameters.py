"""The node's parameters: name, default, description and allowed values, in one table.

The backend's parameters take their defaults from vlm_ros.backends.BackendSettings (the ROS-free settings they
fill). config/perception.yaml holds the same defaults for users to copy and edit; a test checks that both agree.
Per-camera parameters `cameras.<name>.<key>` are declared for each name listed in `cameras`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

from vlm_ros.backends import BACKENDS, BackendSettings
from vlm_ros.grounding import GROUNDING_MODES, GroundingSettings
from vlm_ros.models.registry import ADAPTERS
from vlm_ros.models.remote import FAMILIES as REMOTE_FAMILIES
from vlm_ros.tracking.session import MAX_TARGETS_LIMIT


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None
    startup: bool = False  # read only at start: refused at run time instead of silently ignored

    def descriptor(self) -> ParameterDescriptor:
        d = ParameterDescriptor(name=self.name, description=self.description, read_only=self.startup)
        if isinstance(self.default, bool):
            d.type = ParameterType.PARAMETER_BOOL
        elif isinstance(self.default, int) and self.range:
            d.type = ParameterType.PARAMETER_INTEGER
            d.integer_range = [IntegerRange(from_value=int(self.range[0]), to_value=int(self.range[1]), step=1)]
        elif isinstance(self.default, float) and self.range:
            d.type = ParameterType.PARAMETER_DOUBLE
            d.floating_point_range = [FloatingPointRange(from_value=float(self.range[0]),
                                                         to_value=float(self.range[1]))]
        if self.choices:
            d.additional_constraints = "one of: " + ", ".join(self.choices)
        return d

    def check(self, value: Any) -> str:
        """Reason the value is refused, or "" (ranges are also enforced by rclpy through the descriptor)."""
        if (self.choices and value not in self.choices
                and not (self.name == "device" and str(value).startswith("cuda:"))):
            return f"{self.name} must be one of {', '.join(self.choices)}; got '{value}'"
        if self.range and not (self.range[0] <= value <= self.range[1]):
            return f"{self.name} must be in [{self.range[0]}, {self.range[1]}]; got {value}"
        return ""


def _backend(name: str, description: str, **limits) -> ParamSpec:
    """A parameter of the backend settings: its default is BackendSettings'."""
    return ParamSpec(name, _BACKEND_DEFAULTS[name], description, **limits)


def _grounding(name: str, description: str, **limits) -> ParamSpec:
    """A parameter of the grounding stage: its default is GroundingSettings'."""
    return ParamSpec(name, GroundingSettings.defaults()[name], description, **limits)


_BACKEND_DEFAULTS = BackendSettings.defaults()
NODE_PARAMS = [
    _backend("model", "local model directory (or id in the local HF cache); '' = the embedded default model"),
    _backend("family", "model adapter; auto = from the model's config", choices=("auto", *ADAPTERS)),
    _backend("backend", "inference backend; auto = TensorRT if present, else torch (CUDA, else CPU)",
             choices=("auto", *BACKENDS)),
    _backend("device", "auto | cpu | cuda | cuda:N", choices=("auto", "cpu", "cuda")),
    _backend("dtype", "auto = float16 on CUDA, float32 on CPU", choices=("auto", "float32", "float16", "bfloat16")),
    _backend("engines_dir", "exported graphs and TensorRT engines (absolute path); '' = the checkout's "
             "engines/ if writable, else ~/.cache/vlm_ros/engines"),
    _backend("engine_policy", "onnxruntime/tensorrt cache: reuse (build missing, refuse stale), rebuild "
             "(build missing or stale), refuse (build nothing at start)", choices=("reuse", "rebuild", "refuse")),
    _backend("precision", "TensorRT precision; int8/fp8 need a Q/DQ-quantised graph and a GPU that has them",
             choices=("fp16", "fp32", "int8", "fp8")),
    _backend("engine_max_tokens", "most prompt + generated tokens: the TensorRT shape profile and the context the "
             "memory check counts the KV cache for", range=(64, 32768)),
    _backend("quantize", "backend torch: int8 = the text decoder's linear layers hold int8 weights (torch's "
             "int8 weight-packed kernel); int4 = 4-bit weights in groups (torch's CPU int4 kernel, CPU only)",
             choices=("none", "int8", "int4")),
    ParamSpec("memory_check", True, "at configure, refuse a model whose estimated memory (weights, KV cache for "
              "engine_max_tokens, activations, runtime) + memory_margin_mb exceeds what is available"),
    ParamSpec("memory_margin_mb", 512.0, "memory kept free beyond the estimate (MiB)", range=(0.0, 1048576.0)),
    _backend("dla_core", "Jetson: build TensorRT engines for this DLA core (GPU fallback); -1 = GPU only",
             range=(-1, 7)),
    _backend("engine_image_height", "onnxruntime/tensorrt with idefics3 or qwen2_5_vl: camera frame height the "
             "graphs are exported for (their image input depends on the frame size)", range=(16, 8192)),
    _backend("engine_image_width", "onnxruntime/tensorrt with idefics3 or qwen2_5_vl: camera frame width the "
             "graphs are exported for", range=(16, 8192)),
    # grounding: who boxes a grounding request, masks for the targets (read at configure)
    _grounding("grounding", "who boxes grounding requests: auto = the model where its family emits boxes, "
               "grounding_detector otherwise; vlm = always the model; detector = always grounding_detector",
               choices=GROUNDING_MODES),
    _grounding("grounding_detector", "local OWLv2 / OWL-ViT / Grounding DINO directory that boxes the objects the "
               "model names (families without boxes: SmolVLM, LLaVA, BLIP-2, InstructBLIP); '' = none"),
    _grounding("grounding_detector_threshold", "detector score threshold; 0 = the detector family's default "
               "(OWLv2/OWL-ViT 0.1, Grounding DINO 0.35)", range=(0.0, 0.99)),
    _grounding("segmenter", "local SAM / SAM 2 / EdgeTAM directory: a mask for each target box; '' = none "
               "(Florence-2 outlines its targets itself; otherwise 3-D geometry uses the depth layer in the box)"),
    _grounding("max_targets", "most targets in one answer (model boxes, detections, segmenter prompts)",
               range=(1, 100)),
    # backend remote: an OpenAI-compatible server (vLLM, SGLang, TensorRT-LLM, Ollama, transformers serve)
    _backend("remote.base_url", "server URL; queries go to <base_url>/chat/completions"),
    _backend("remote.model", "model name on the server; '' = the first model it lists"),
    _backend("remote.api_key_env", "name of the environment variable that holds the API key; '' = none"),
    _backend("remote.family", "how to phrase tasks and read boxes: the served model's family",
             choices=REMOTE_FAMILIES),
    _backend("remote.timeout_s", "longest wait for any data from the server", range=(0.1, 3600.0)),
    _backend("remote.connect_timeout_s", "connection timeout", range=(0.05, 60.0)),
    _backend("remote.retries", "further tries on connection errors and 5xx (backoff 0.25 s, doubling)",
             range=(0, 10)),
    _backend("remote.max_concurrency", "requests in flight to the server from this node", range=(1, 64)),
    _backend("remote.verify_tls", "verify the server's TLS certificate (https)"),
    _backend("remote.image_format", "how frames are sent", choices=("jpeg", "png")),
    _backend("remote.jpeg_quality", "JPEG quality of sent frames", range=(1, 100)),
    _backend("remote.max_image_side", "downscale sent frames to this longer side; 0 = source size",
             range=(0, 8192)),
    _backend("cpu_threads", "threads of the model's CPU work (torch intra-op, onnxruntime intra-op); 0 = one per "
             "core. More than 1 is faster only while those cores are free: with another process on one core of two, "
             "2 threads made the first token 60x slower (docs/performance.md)", range=(0, 1024)),
    _backend("self_check", "after configure builds a backend that is not the eager float32 reference (onnxruntime, "
             "TensorRT, torch float16/bfloat16/int8/int4), compare its answer to a fixed probe with that reference "
             "(loaded on the CPU for the check where the backend holds no float32 copy; skipped, and said so, when "
             "that copy would not fit the host memory); beyond tolerance, configure fails"),
    ParamSpec("autostart", True, "configure and activate on start", startup=True),
    ParamSpec("warmup", True, "after configure, the worker answers one short query on a blank frame of "
              "engine_image_width x engine_image_height before any real one (first-use work: buffers, CUDA graphs); "
              "not for backend remote"),
    ParamSpec("cameras", ["front"], "camera names; each has cameras.<name>.* parameters", startup=True),
    ParamSpec("default_camera", "front", "camera used when a query names none"),
    ParamSpec("max_frame_age_s", 2.0, "a query on an older newest frame gets STALE_FRAME", range=(0.01, 3600.0)),
    ParamSpec("depth_sync_tolerance_s", 0.05, "depth pairs with colour within this stamp difference", range=(0.0, 1.0),
              startup=True),
    ParamSpec("service_name", "~/query", "name of the Query service", startup=True),
    ParamSpec("action_name", "~/query", "name of the Query action", startup=True),
    ParamSpec("queue_size", 4, "pending queries beyond the running one; more get BUSY", range=(1, 64), startup=True),
    ParamSpec("default_timeout_s", 10.0, "timeout when a query gives 0", range=(0.05, 600.0)),
    ParamSpec("max_timeout_s", 120.0, "largest timeout a query may ask for", range=(0.05, 3600.0)),
    ParamSpec("default_max_new_tokens", 64, "token budget when a query gives 0", range=(1, 4096)),
    ParamSpec("max_new_tokens_limit", 512, "largest token budget a query may ask for", range=(1, 4096)),
    ParamSpec("max_instruction_bytes", 1024, "longest instruction accepted (UTF-8 bytes)", range=(1, 65536)),
    ParamSpec("track_action_name", "~/track", "name of the Track action", startup=True),
    ParamSpec("max_tracks", 2, "Track goals that may run at once; more are aborted with BUSY", range=(1, 16),
              startup=True),
    ParamSpec("track_reground_period_s", 1.0, "a Track goal re-grounds at least this often when it gives 0",
              range=(0.1, 3600.0)),
    ParamSpec("track_max_targets", 5, "most targets a Track goal follows when it gives 0",
              range=(1, MAX_TARGETS_LIMIT)),
    ParamSpec("track_camera_timeout_s", 1.0, "no new frame for this long: a Track goal's tracks become lost",
              range=(0.05, 60.0)),
    ParamSpec("description_rate_hz", 0.0, "periodic ~/description of the default camera; 0 = off", range=(0.0, 10.0)),
    ParamSpec("publish_annotated", True, "publish ~/annotated (source image with boxes and labels)"),
    ParamSpec("publish_markers", True, "publish ~/markers (MarkerArray of 3-D targets)"),
    ParamSpec("diagnostics_period_s", 1.0, "period of /diagnostics", range=(0.1, 60.0), startup=True),
]

CAMERA_PARAMS = [
    ParamSpec("image_topic", "", "sensor_msgs/Image topic; '' = none"),
    ParamSpec("compressed_topic", "", "sensor_msgs/CompressedImage topic (jpeg/png); '' = none"),
    ParamSpec("camera_info_topic", "", "CameraInfo of the colour image; '' = none"),
    ParamSpec("depth_topic", "", "depth Image (16UC1 mm / 32FC1 m) registered to colour; '' = none"),
    ParamSpec("depth_info_topic", "", "CameraInfo of the depth image; '' = none"),
]
# The default camera's topics (relative names, remappable at launch).
FRONT_CAMERA_TOPICS = {
    "image_topic": "camera/image_raw",
    "compressed_topic": "",
    "camera_info_topic": "camera/camera_info",
    "depth_topic": "camera/depth/image_raw",
    "depth_info_topic": "camera/depth/camera_info",
}


def camera_specs(camera: str) -> list[ParamSpec]:
    defaults = FRONT_CAMERA_TOPICS if camera == "front" else {}
    return [ParamSpec(f"cameras.{camera}.{p.name}", defaults.get(p.name, p.default),
                      p.description + " (used at activate)")
            for p in CAMERA_PARAMS]
