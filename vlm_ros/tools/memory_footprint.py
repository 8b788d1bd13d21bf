"""Estimate vs measured peak RSS for a real-size random-weight config (vlm_ros/testing/sizes.py), on the CPU.

    python -m vlm_ros.tools.memory_footprint so400m-qwen2-0.5b --dtype bfloat16 [--quantize int8] [--max-tokens 1024]

Builds the model with random weights in this process, writes its config and processor files (no weights) to a
temporary directory, estimates from that directory (parameter counts from the model built on the meta device),
then answers one query on a 640x480 frame with the engine's KV buffer sized for --max-tokens and prints the
estimate beside this process's peak RSS (ru_maxrss). Run one at a time: the process holds the whole model.
Building in memory skips from_pretrained's loading transient, which this figure therefore does not include.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile

import numpy as np
import torch

from vlm_ros.memory import MiB, estimate, kv_buffer_tokens


def main(argv: list[str] | None = None) -> int:
    from vlm_ros.core.types import Frame, Request, Task
    from vlm_ros.engine import TorchEngine
    from vlm_ros.quantize import quantize_decoder_int8
    from vlm_ros.testing.sizes import CONFIGS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", choices=sorted(CONFIGS))
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--quantize", default="none", choices=("none", "int8"))
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="append the result as one JSON line here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    adapter = CONFIGS[args.config]("cpu", getattr(torch, args.dtype))
    if args.quantize == "int8":
        quantize_decoder_int8(adapter.model)
    with tempfile.TemporaryDirectory(prefix="vlm_ros_footprint_") as directory:
        adapter.model.config.save_pretrained(directory)
        adapter.processor.save_pretrained(directory)
        est = estimate(directory, dtype=args.dtype, quantize=args.quantize, max_tokens=args.max_tokens,
                       image_size=(480, 640), family=adapter.family)
    image = (np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8)
    engine = TorchEngine(adapter, max_cache_len=kv_buffer_tokens(args.max_tokens))
    inputs = adapter.prepare(Frame(image, 1), Request(Task.ANSWER, "what is on the table?"))
    result = engine.generate(inputs, args.new_tokens, ignore_eos=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(est.table())
    print(f"prompt {inputs.prompt_length} tokens, {len(result.token_ids)} generated")
    print(f"measured peak RSS {peak / MiB:.0f} MiB; estimate {est.total / MiB:.0f} MiB "
          f"({(est.total - peak) / peak:+.1%})")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"config": args.config, "dtype": args.dtype, "quantize": args.quantize,
                                "max_tokens": args.max_tokens, "estimate_bytes": est.total, "peak_rss_bytes": peak,
                                "rows": est.rows()}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
