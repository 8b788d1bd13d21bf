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


def reset_peak_rss() -> None:
    """Start VmHWM (peak RSS in /proc/self/status) again from the current RSS (Linux clear_refs 5)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def vm_hwm() -> int:
    """Peak RSS since the last reset_peak_rss(), bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def config_estimate(adapter, dtype: str, quantize: str, max_tokens: int):
    """The estimate for an adapter's model from its config and processor files alone (written to a temp dir)."""
    with tempfile.TemporaryDirectory(prefix="vlm_ros_footprint_") as directory:
        adapter.model.config.save_pretrained(directory)
        adapter.processor.save_pretrained(directory)
        return estimate(directory, dtype=dtype, quantize=quantize, max_tokens=max_tokens, image_size=(480, 640),
                        family=adapter.family)


def main(argv: list[str] | None = None) -> int:
    from vlm_ros.core.types import Frame, Request, Task
    from vlm_ros.engine import TorchEngine
    from vlm_ros.quantize import quantize_decoder
    from vlm_ros.testing.sizes import CONFIGS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", choices=sorted(CONFIGS))
    parser.add_argument("--estimate-only", action="store_true",
                        help="build on the meta device (no memory) and print the estimate for --max-tokens only")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--quantize", default="none", choices=("none", "int8", "int4"))
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="append the result as one JSON line here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    adapter = CONFIGS[args.config]("meta" if args.estimate_only else "cpu", getattr(torch, args.dtype))
    if args.estimate_only:
        print(config_estimate(adapter, args.dtype, args.quantize, args.max_tokens).table())
        return 0
    if args.quantize != "none":
        quantize_decoder(adapter.model, args.quantize)
    est = config_estimate(adapter, args.dtype, args.quantize, args.max_tokens)
    load_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    reset_peak_rss()
    image = (np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8)
    engine = TorchEngine(adapter, max_cache_len=kv_buffer_tokens(args.max_tokens))
    inputs = adapter.prepare(Frame(image, 1), Request(Task.ANSWER, "what is on the table?"))
    result = engine.generate(inputs, args.new_tokens, ignore_eos=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    running_peak = vm_hwm()
    print(est.table())
    print(f"prompt {inputs.prompt_length} tokens, {len(result.token_ids)} generated")
    print(f"measured peak RSS {peak / MiB:.0f} MiB; estimate {est.total / MiB:.0f} MiB "
          f"({(est.total - peak) / peak:+.1%})")
    print(f"building the model (and packing): peak {load_peak / MiB:.0f} MiB; answering: peak "
          f"{running_peak / MiB:.0f} MiB, estimate {est.running / MiB:.0f} MiB "
          f"({(est.running - running_peak) / running_peak:+.1%})")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"config": args.config, "dtype": args.dtype, "quantize": args.quantize,
                                "max_tokens": args.max_tokens, "estimate_bytes": est.total, "peak_rss_bytes": peak,
                                "build_peak_rss_bytes": load_peak, "running_peak_rss_bytes": running_peak,
                                "running_estimate_bytes": est.running,
                                "rows": est.rows()}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
