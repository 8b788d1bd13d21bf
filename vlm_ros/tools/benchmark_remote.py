"""Remote backend figures: request payload per frame, and one query's round trip remote vs local.

    transformers serve vlm_ros/embedded/weights --host 127.0.0.1 --port 8000 --device cpu &   # or vLLM/SGLang
    python -m vlm_ros.tools.benchmark_remote --base-url http://127.0.0.1:8000/v1

Same frame (a rendered 640x480 table-top scene), same request, same machine: the local torch backend on the
embedded model, and the remote backend (JPEG q90 and PNG) against the server. Medians over --repeats, after
one warm-up query each. `--no-local` skips the local model (for a server serving another model).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from vlm_ros.core.types import Frame, Request, Task


def payload_sizes(image, quality: int = 90) -> dict[str, dict[str, int]]:
    """Encoded image bytes and whole request-body bytes (base64 data URL in JSON) per format."""
    from vlm_ros.models.remote import RemoteAdapter

    out = {}
    for fmt in ("jpeg", "png"):
        inputs = RemoteAdapter("embedded", fmt, quality, 0).prepare(Frame(image), Request(Task.ANSWER, "what is this?"))
        out[fmt] = {"image_bytes": inputs.image_bytes, "body_bytes": len(json.dumps({"messages": inputs.messages}))}
    return out


def median_answer_s(pipeline, frame: Frame, request: Request, repeats: int) -> tuple[float, str]:
    answer = pipeline.answer(frame, request)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        answer = pipeline.answer(frame, request)
        times.append(time.perf_counter() - t0)
        if answer.status != 0:
            raise RuntimeError(f"query failed: {answer.status.name} {answer.message}")
    return statistics.median(times), answer.text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--family", default="embedded")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--no-local", dest="local", action="store_false")
    args = parser.parse_args(argv)

    from vlm_ros.backends import BackendSettings, RemoteSettings, build_pipeline
    from vlm_ros.embedded.scenes import render_scene

    image = render_scene(args.seed).image
    frame = Frame(image)
    request = Request(Task.ANSWER, "what color is the cube?", args.max_new_tokens, 120.0)
    rows = []
    for fmt, size in payload_sizes(image).items():
        rows.append((f"payload {fmt} (q90)" if fmt == "jpeg" else f"payload {fmt}",
                     f"{size['image_bytes'] / 1024:.0f} KiB image, {size['body_bytes'] / 1024:.0f} KiB request body"))
    if args.local:
        from vlm_ros.models.registry import load_adapter
        from vlm_ros.pipeline import Pipeline

        t, text = median_answer_s(Pipeline(load_adapter("", "embedded", "cpu")), frame, request, args.repeats)
        rows.append(("local torch (cpu)", f"{t * 1e3:.0f} ms  {text!r}"))
    for fmt in ("jpeg", "png"):
        remote = RemoteSettings(base_url=args.base_url, family=args.family, image_format=fmt)
        pipeline, _ = build_pipeline(BackendSettings(backend="remote", remote=remote), lambda line: None)
        t, text = median_answer_s(pipeline, frame, request, args.repeats)
        rows.append((f"remote {fmt}", f"{t * 1e3:.0f} ms  {text!r}"))
    print(f"one query, 640x480 frame, {args.max_new_tokens} new tokens at most, median of {args.repeats}:")
    for name, value in rows:
        print(f"  {name:<20} {value}")


if __name__ == "__main__":
    main()
