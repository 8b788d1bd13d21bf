"""Print the memory a model directory needs before copying it to the robot (no tensor is loaded).

    python -m vlm_ros.tools.memory_estimate DIR [--dtype bfloat16] [--quantize int8] [--max-tokens 1024]
        [--image 480x640] [--device cpu|cuda] [--check --margin-mb 512]

DIR '' (or omitted) is the embedded default model. With --check the figure is compared with this machine's
available memory (vlm_ros.memory.available_bytes) and the exit status is 1 when it does not fit.
"""

from __future__ import annotations

import argparse
import sys

from vlm_ros.memory import DTYPE_BYTES, QUANTIZE_CHOICES, MemoryAdmissionError, check_fits, estimate


def image_size(text: str) -> tuple[int, int]:
    """'480x640' -> (480, 640): height x width of the camera frame."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--image takes HEIGHTxWIDTH, e.g. 480x640; got '{text}'") from None
    return h, w


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default="", help="model directory ('' = the embedded default model)")
    parser.add_argument("--dtype", default="auto", choices=("auto", *DTYPE_BYTES))
    parser.add_argument("--quantize", default="none", choices=QUANTIZE_CHOICES)
    parser.add_argument("--device", default="cpu", help="cpu | cuda (only chooses the dtype default and overhead)")
    parser.add_argument("--max-tokens", type=int, default=1024, help="prompt + generated tokens (engine_max_tokens)")
    parser.add_argument("--image", type=image_size, default=(480, 640), help="camera frame HEIGHTxWIDTH")
    parser.add_argument("--family", default="auto")
    parser.add_argument("--check", action="store_true", help="compare with this machine's available memory")
    parser.add_argument("--margin-mb", type=float, default=512.0, help="safety margin for --check")
    args = parser.parse_args(argv)
    settings = dict(dtype=args.dtype, device=args.device, quantize=args.quantize, max_tokens=args.max_tokens,
                    image_size=args.image, family=args.family)
    print(estimate(args.model, **settings).table())
    if args.check:
        try:
            print(check_fits(args.model, margin_mb=args.margin_mb, **settings).message())
        except MemoryAdmissionError as exc:
            print(exc)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
