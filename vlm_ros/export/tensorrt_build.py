"""TensorRT engines from the exported ONNX graphs (TensorRT 10 Python API), cached with a manifest.

One engine per graph (vision, prefill, decode), built with an optimisation profile for the dynamic axes
(prompt length S, cache length P; Qwen2.5-VL's position_ids (3, S) follow S, its rope_delta is fixed (1,);
InstructBLIP's Q-Former instruction tokens (1, Q) range over 1 .. the Q-Former's position count; an
encoder-decoder's cross K / V (1, H, S, D) follow S), FP16 by default, a timing cache shared by all builds on
this GPU and TensorRT version, progress output, and every ONNX parser error logged. The folder's manifest key
holds the model hash, export version, TensorRT version, GPU name and compute capability, JetPack (Jetson),
precision, DLA core and shape profile; manifest.py decides reuse / rebuild / refuse.

Everything here that does not need TensorRT (profiles, precision checks, keys) is importable without it.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path

from vlm_ros.engine import names
from vlm_ros.engine.graph_engine import GraphShapes
from vlm_ros.export import DEFAULT_IMAGE_SIZE

PRECISIONS = ("fp16", "fp32", "int8", "fp8")
# Smallest compute capability with fast kernels for each precision (FP8: Ada / Hopper and later).
MIN_COMPUTE_CAPABILITY = {"fp32": (5, 0), "fp16": (5, 3), "int8": (6, 1), "fp8": (8, 9)}
# graph -> input -> (min, opt, max) shape
Profile = dict[str, dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]]
Log = Callable[[str], None]


def shape_profiles(shapes: GraphShapes, max_tokens: int, opt_tokens: int | None = None) -> Profile:
    """Optimisation profiles (min, opt, max) per graph input. max_tokens bounds prompt + generated tokens."""
    n = shapes.image_tokens
    if max_tokens < n + 2:
        raise ValueError(f"max_tokens {max_tokens} leaves no room beside the {n} image tokens")
    opt = min(max(opt_tokens or n + 32, n + 1), max_tokens)

    def fixed(shape):
        shape = tuple(shape)
        return shape, shape, shape

    kv = (1, shapes.kv_heads)
    past = ((*kv, 1, shapes.head_dim), (*kv, max(1, opt), shapes.head_dim), (*kv, max_tokens - 1, shapes.head_dim))
    prompt = ((1, n + 1), (1, opt), (1, max_tokens))
    extra_prefill = {names.POSITION_IDS: tuple((3, s[1]) for s in prompt)} if shapes.mrope else {}
    extra_decode = {names.ROPE_DELTA: fixed((1,))} if shapes.mrope else {}
    if shapes.encoder_decoder:  # the prefill starts the decoder: the cache holds generated tokens only
        past = ((*kv, 1, shapes.head_dim), (*kv, min(32, max_tokens - 1), shapes.head_dim),
                (*kv, max_tokens - 1, shapes.head_dim))
        encoded = tuple((*kv, s[1], shapes.head_dim) for s in prompt)  # cross K / V follow the prompt length
        cross = {name: encoded for name in names.cross_names(shapes.layers)}
    else:
        cross = {}
    extra_vision = {}
    if shapes.qformer_text_max:  # InstructBLIP: the instruction's Q-Former tokens (1, Q)
        q = shapes.qformer_text_max
        text = ((1, 1), (1, min(32, q)), (1, q))
        extra_vision = {names.QFORMER_INPUT_IDS: text, names.QFORMER_ATTENTION_MASK: text}
    return {
        "vision": {names.PIXEL_VALUES: fixed(shapes.pixel_shape), **extra_vision},
        "prefill": {names.INPUT_IDS: prompt, names.IMAGE_FEATURES: fixed((n, shapes.embed_dim)), **extra_prefill},
        "decode": {names.INPUT_IDS: fixed((1, 1)), **extra_decode,
                   **{name: past for name in names.past_names(shapes.layers)}, **cross},
    }


def precision_problem(precision: str, compute_capability: tuple[int, int], onnx_has_qdq: bool) -> str:
    """Why `precision` cannot be built on this GPU / from this graph, or ''. INT8 and FP8 need Q/DQ nodes
    (explicit quantisation, e.g. from NVIDIA ModelOpt): the exporter here writes float graphs only."""
    if precision not in PRECISIONS:
        return f"precision must be one of {', '.join(PRECISIONS)}; got '{precision}'"
    need = MIN_COMPUTE_CAPABILITY[precision]
    if tuple(compute_capability) < need:
        return (f"{precision} needs compute capability {need[0]}.{need[1]} or newer; this GPU has "
                f"{compute_capability[0]}.{compute_capability[1]}")
    if precision in ("int8", "fp8") and not onnx_has_qdq:
        return (f"{precision} needs a graph with QuantizeLinear/DequantizeLinear nodes (explicit quantisation); "
                "the exported graphs are float: use fp16, or quantise the ONNX first")
    return ""


def has_qdq(onnx_path: str | Path) -> bool:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in graph.node)


def jetpack_version() -> str:
    """'' off Jetson; else the L4T release line (/etc/nv_tegra_release), which names the JetPack's BSP."""
    path = Path("/etc/nv_tegra_release")
    if not path.is_file():
        return ""
    return path.read_text().splitlines()[0].strip().lstrip("# ")[:80] if path.read_text().strip() else "unknown"


def platform_key(device: int = 0) -> dict:
    """TensorRT version, GPU name and compute capability, CPU architecture and JetPack: engines are built for these."""
    import tensorrt as trt
    import torch

    return {"tensorrt": trt.__version__, "gpu": torch.cuda.get_device_name(device),
            "compute_capability": list(torch.cuda.get_device_capability(device)), "arch": platform.machine(),
            "jetpack": jetpack_version()}


def engine_key(export_key: dict, platform: dict, precision: str, profile: Profile, dla_core: int) -> dict:
    return {**export_key, **platform, "precision": precision, "dla_core": dla_core,
            "profile": {g: {k: [list(s) for s in v] for k, v in p.items()} for g, p in profile.items()}}


def _dtype_name(x) -> str:
    return str(x).split(".")[-1]


def build_engine(onnx_path: Path, engine_path: Path, profile: dict, precision: str, timing_cache: Path,
                 log: Log, dla_core: int = -1, workspace_gb: float | None = None) -> None:
    """Parse `onnx_path`, build a serialized engine for `profile` and write it to `engine_path`."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        for i in range(parser.num_errors):
            err = parser.get_error(i)
            node = getattr(err, "node_name", lambda: "")() or err.node()
            log(f"ONNX parser error {i + 1}/{parser.num_errors} in {onnx_path.name} (node {node}): "
                f"{_dtype_name(err.code())}: {err.desc()}")
        raise RuntimeError(f"TensorRT could not parse {onnx_path} ({parser.num_errors} errors, logged above)")

    config = builder.create_builder_config()
    if workspace_gb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    flags = {"fp16": [trt.BuilderFlag.FP16], "int8": [trt.BuilderFlag.INT8, trt.BuilderFlag.FP16],
             "fp8": [trt.BuilderFlag.FP8, trt.BuilderFlag.FP16], "fp32": []}[precision]
    for flag in flags:
        config.set_flag(flag)
    if dla_core >= 0:  # Jetson: layers DLA can run go there, the rest falls back to the GPU
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)

    opt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.items():
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)

    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    config.progress_monitor = _progress_monitor(log, onnx_path.stem)

    t0 = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    engine_path.write_bytes(bytes(serialized))
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    log(f"built {engine_path} ({engine_path.stat().st_size / 1e6:.1f} MB, {precision}) "
        f"in {time.monotonic() - t0:.0f} s")


def _progress_monitor(log: Log, graph: str):
    """A trt.IProgressMonitor that logs each top-level build phase (a class made here: TensorRT may be absent)."""
    import tensorrt as trt

    class Progress(trt.IProgressMonitor):
        """Prints each top-level build phase and its step count (TensorRT calls this from its threads)."""

        def __init__(self, log: Log, graph: str):
            trt.IProgressMonitor.__init__(self)
            self.log, self.graph = log, graph

        def phase_start(self, phase_name, parent_phase, num_steps):
            if parent_phase is None:
                self.log(f"[{self.graph}] {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            pass

    return Progress(log, graph)


def ensure_engines(adapter, model_dir: Path, root: Path, policy: str, log: Log, precision: str = "fp16",
                   max_tokens: int = 1024, dla_core: int = -1, device: int = 0,
                   image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE) -> tuple[Path, GraphShapes, dict]:
    """The TensorRT folder for `adapter`'s model (exporting the ONNX first), per `policy`. -> (folder, shapes, key).

    `image_size` (H, W): the frame size a frame-sized family (Idefics3 tiles, Qwen2.5-VL grid) is exported for."""
    from vlm_ros.export.manifest import ensure, folder_name
    from vlm_ros.export.onnx_export import ensure_export, export_key

    onnx_dir, shapes = ensure_export(adapter, model_dir, root, policy, log, image_size)
    profiles = shape_profiles(shapes, max_tokens)
    plat = platform_key(device)
    problem = precision_problem(precision, tuple(plat["compute_capability"]),
                                has_qdq(onnx_dir / names.PREFILL_FILE))
    if problem:
        raise ValueError(problem)
    key = engine_key(export_key(model_dir, adapter.family, image_size), plat, precision, profiles, dla_core)
    directory = root / folder_name(model_dir, adapter.family, f"trt-{precision}")
    cache_name = f"timing-{plat['gpu']}-{plat['tensorrt']}.cache".replace(" ", "_").replace("/", "_")

    def build(tmp: Path) -> dict:
        for graph, onnx_file in names.GRAPH_FILES.items():
            log(f"building the {graph} engine from {onnx_dir / onnx_file} ({precision}) ...")
            build_engine(onnx_dir / onnx_file, tmp / names.ENGINE_FILES[graph], profiles[graph], precision,
                         root / cache_name, log, dla_core)
        return {"shapes": shapes.to_dict(), "onnx_dir": str(onnx_dir), "files": sorted(names.ENGINE_FILES.values())}

    ensure(directory, "tensorrt", key, policy, build, log)
    return directory, shapes, key
