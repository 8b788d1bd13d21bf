"""Build (or check) the engines of a model offline: `ros2 run vlm_ros build_engines` / `vlm-ros-build-engines`.

    build_engines                                   # embedded model: ONNX export + TensorRT fp16 engines
    build_engines --model /models/llava --precision fp16 --max-tokens 2048
    build_engines --onnx-only                       # the ONNX export only (what backend onnxruntime uses)
    build_engines --policy refuse                   # check only: exit 1 unless matching engines exist

Writes into engines_dir (default: the checkout's engines/ if writable, else ~/.cache/vlm_ros/engines), with a
manifest beside each engine; exit status 0 on success, 1 with the reason on failure.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build_engines", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="", help="local model directory; '' = the embedded default model")
    parser.add_argument("--family", default="auto")
    parser.add_argument("--engines-dir", default="", help="absolute path; '' = the default engines folder")
    parser.add_argument("--precision", default="fp16", choices=("fp16", "fp32", "int8", "fp8"))
    parser.add_argument("--policy", default="rebuild", choices=("reuse", "rebuild", "refuse"))
    parser.add_argument("--max-tokens", type=int, default=1024, help="shape profile: most prompt + generated tokens")
    parser.add_argument("--dla-core", type=int, default=-1, help="Jetson DLA core (GPU fallback); -1 = GPU only")
    parser.add_argument("--device", type=int, default=0, help="CUDA device index")
    parser.add_argument("--onnx-only", action="store_true", help="export the ONNX graphs only (no TensorRT)")
    parser.add_argument("--image-height", type=int, default=480, help="idefics3 / qwen2_5_vl: camera frame height "
                        "the graphs are made for (the node's engine_image_height)")
    parser.add_argument("--image-width", type=int, default=640, help="idefics3 / qwen2_5_vl: camera frame width "
                        "(the node's engine_image_width)")
    args = parser.parse_args(argv)
    image_size = (args.image_height, args.image_width)

    from pathlib import Path

    from vlm_ros.export.manifest import engines_dir
    from vlm_ros.export.onnx_export import ensure_export
    from vlm_ros.models.registry import default_model_dir, load_adapter

    def log(message: str) -> None:
        print(f"[build_engines] {message}", flush=True)

    t0 = time.monotonic()
    try:
        root = engines_dir(args.engines_dir)
        model_dir = Path(args.model) if args.model else default_model_dir()
        adapter = load_adapter(args.model, args.family, "cpu")
        log(f"model {model_dir} (family {adapter.family}); engines folder {root}")
        if args.onnx_only:
            directory, _ = ensure_export(adapter, model_dir, root, args.policy, log, image_size)
        else:
            from vlm_ros.export.tensorrt_build import ensure_engines

            directory, _, _ = ensure_engines(adapter, model_dir, root, args.policy, log, args.precision,
                                             args.max_tokens, args.dla_core, args.device, image_size)
    except ImportError as exc:
        log(f"error: {exc} (TensorRT missing? --onnx-only exports the graphs without it)")
        return 1
    except Exception as exc:  # noqa: BLE001 -- a command-line tool: the reason, and a failing exit status
        log(f"error: {type(exc).__name__}: {exc}")
        return 1
    log(f"ready: {directory} ({time.monotonic() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
