r"""Engine benchmark: time to first token and decode speed of our engine vs transformers' generate().

    python -m vlm_ros.tools.benchmark_engine                      # the embedded default model, CPU
    python -m vlm_ros.tools.benchmark_engine --model tiny-llava   # a tiny random LLaVA
    python -m vlm_ros.tools.benchmark_engine --model /models/x --device cuda --dtype bfloat16 \
        --json out.json --plot out.png

Same model, same frame, same prompt, same run: our engine (lean decoder: numpy step on the CPU, CUDA graph
on GPU), generate() with the dynamic cache (eager), and generate() with the static cache. Greedy, batch 1, a
fixed number of new tokens (EOS ignored). Prints a table with ratios and the peak RSS; timings are medians
over --repeats rounds, each of which times every contestant in turn (a shared machine's speed drifts).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vlm_ros.core.types import Frame, Request, Task
from vlm_ros.engine import TorchEngine
from vlm_ros.tools.plot import bar_chart


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _median_time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    return statistics.median(_timed(fn, device) for _ in range(repeats))


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def copy_bandwidth(device: torch.device, gib: float = 2.0) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write), the ceiling for batch-1 decode."""
    n = int(gib * 2**30) // 4
    a, b = torch.empty(n, device=device), torch.empty(n, device=device)
    b.copy_(a)
    t = _median_time(lambda: b.copy_(a), 5, device)
    return 2 * n * 4 / t


def decoder_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of weights read per decode step: everything except the vision tower and unused embeddings."""
    skip = ("vision", "visual", "multi_modal_projector")
    total = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if not any(s in n for s in skip))
    embed = model.get_input_embeddings().weight
    tied = model.get_output_embeddings() is not None and model.get_output_embeddings().weight is embed
    return total - (0 if tied else embed.numel() * embed.element_size())  # one embedding row only is read


def _engine_runner(engine, inputs) -> Callable[[int], object]:
    """n -> one query of n new tokens on a new frame (the vision cache cleared first)."""
    def run(n: int):
        engine.clear_vision_cache()
        return engine.generate(inputs, n, ignore_eos=True)
    return run


def _time_rounds(runners: dict[str, Callable[[int], object]], tokens: int, repeats: int, device) -> dict:
    """Time 1-token and `tokens`-token queries of every runner in interleaved rounds, so that the slow and fast
    phases of a shared machine fall on all of them alike; {name: {ttft_s, decode_tok_s, total_s}} of the medians."""
    one: dict[str, list[float]] = {name: [] for name in runners}
    full: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            one[name].append(_timed(lambda run=run: run(1), device))
            full[name].append(_timed(lambda run=run: run(tokens), device))
    figures = {}
    for name in runners:
        t1, tn = statistics.median(one[name]), statistics.median(full[name])
        figures[name] = {"ttft_s": t1, "decode_tok_s": (tokens - 1) / max(tn - t1, 1e-9), "total_s": tn}
    return figures


def benchmark(adapter, frame: Frame, instruction: str, tokens: int, repeats: int, warmup: int = 2,
              static_baseline: bool = True, compile_decoder: bool = False, onnx: bool = False,
              quantize: str = "none") -> dict:
    """{name: {ttft_s, decode_tok_s, vision_encode_s?}} for the engine and the generate() baselines.

    quantize int8 | int4: also the engine on a copy of the model with quantised decoder weights (vlm_ros/quantize.py),
    in the same rounds.
    """
    device = adapter.device
    inputs = adapter.prepare(frame, Request(Task.ANSWER, instruction, max_new_tokens=tokens))
    results: dict[str, dict] = {}
    runners: dict[str, Callable[[int], object]] = {}

    def enter(name: str, run: Callable[[int], object], **extra) -> bool:
        """Warm a runner up: it joins the timed rounds, or its error is reported (not hidden)."""
        try:
            for _ in range(warmup):
                run(tokens)
        except Exception as exc:  # e.g. a family that refuses a static cache or has no export
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            return False
        runners[name], results[name] = run, extra
        return True

    first = {"compile_decoder": True} if compile_decoder else {}
    # the second only if the first fails
    for engine_kwargs in (first, {"decode_form": "sliced", "graph_vision": False}):
        engine = TorchEngine(adapter, **engine_kwargs)
        if enter("engine", _engine_runner(engine, inputs), options=engine_kwargs or "default"):
            break
        results[f"engine {engine_kwargs or 'default'}"] = results.pop("engine")
    if quantize != "none":
        import copy

        from vlm_ros.quantize import decoder_layers, decoder_weight_bytes, quantize_decoder

        # a copy whose decoder layers are its own (then quantised) and whose other tensors are the original's
        layer_tensors = {id(t) for layer in decoder_layers(adapter.model) for t in layer.parameters()}
        shared = {id(t): t for t in adapter.model.parameters() if id(t) not in layer_tensors}
        quantized = copy.deepcopy(adapter, memo=shared)
        quantize_decoder(quantized.model, quantize)
        quantized_engine = TorchEngine(quantized)
        name = f"engine {quantize}"
        if enter(name, _engine_runner(quantized_engine, inputs),
                 decoder_weight_bytes=decoder_weight_bytes(quantized.model),
                 decoder_weight_bytes_unquantized=decoder_weight_bytes(adapter.model)):
            lean = quantized_engine._lean
            results[name]["decode_form"] = lean.form if lean is not None else "model forward"
    directory = tempfile.mkdtemp(prefix="vlm_ros_bench_onnx_") if onnx else None
    if directory is not None:  # the same model exported to ONNX, on onnxruntime (the `onnxruntime` backend)
        from vlm_ros.engine.onnx_engine import OnnxEngine
        from vlm_ros.export.onnx_export import export_model

        try:
            shapes = export_model(adapter, Path(directory), lambda *_: None).shapes
            onnx_engine = OnnxEngine(adapter, directory, shapes, threads=torch.get_num_threads())
            enter("onnxruntime engine", _engine_runner(onnx_engine, inputs))
        except Exception as exc:  # families without an export
            results["onnxruntime engine"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    model = adapter.model
    baselines = [("generate (dynamic cache)", {})]
    if static_baseline:
        baselines.append(("generate (static cache)", {"cache_implementation": "static"}))
    for name, extra in baselines:
        def gen(n: int, extra=extra):
            with torch.inference_mode():
                return model.generate(**inputs.tensors, max_new_tokens=n, min_new_tokens=n, do_sample=False, **extra)

        enter(name, gen)
    try:
        for name, figures in _time_rounds(runners, tokens, repeats, device).items():
            results[name].update(figures)
    finally:
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
    if "engine" in runners:  # vision encode, and a second query on the same frame (vision features reused)
        engine_results, run = results["engine"], runners["engine"]
        engine_results["vision_encode_s"] = statistics.median(run(1).vision_encode_s for _ in range(repeats))
        engine_results["ttft_cached_frame_s"] = _median_time(lambda: engine.generate(inputs, 1), repeats, device)
        if device.type == "cuda":  # the vision encoder alone, eager (vs the engine's graph)
            with torch.inference_mode():
                engine_results["vision_encode_eager_s"] = _median_time(
                    lambda: adapter.encode_vision(inputs), repeats, device)
    return results


def format_table(results: dict, baseline: str = "generate (dynamic cache)") -> str:
    base = results.get(baseline, {})
    lines = [f"{'':28s} {'TTFT ms':>9s} {'decode tok/s':>13s} {'decode x':>9s} {'TTFT x':>7s}"]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"{name:28s} error: {r['error']}")
            continue
        dx = r["decode_tok_s"] / base["decode_tok_s"] if "decode_tok_s" in base else float("nan")
        tx = base["ttft_s"] / r["ttft_s"] if "ttft_s" in base else float("nan")
        lines.append(f"{name:28s} {r['ttft_s'] * 1e3:9.1f} {r['decode_tok_s']:13.1f} {dx:9.2f} {tx:7.2f}")
    engine = results.get("engine", {})
    if "ttft_cached_frame_s" in engine:
        lines.append(f"engine, same frame again: TTFT {engine['ttft_cached_frame_s'] * 1e3:.1f} ms "
                     f"(vision encode {engine['vision_encode_s'] * 1e3:.1f} ms skipped)")
    return "\n".join(lines)


def load(model: str, device: str, dtype: torch.dtype):
    from vlm_ros.models.llava import LlavaAdapter
    from vlm_ros.models.registry import load_adapter
    from vlm_ros.testing.sizes import CONFIGS

    if model in CONFIGS:
        return CONFIGS[model](device, dtype)
    if model == "tiny-llava":
        from vlm_ros.testing.tiny import build_tiny_llava

        path = build_tiny_llava(tempfile.mkdtemp(prefix="tiny_llava_"))
        return LlavaAdapter.from_pretrained(path, device=device, dtype=dtype)
    return load_adapter(model if model != "embedded" else "", "auto", device, dtype)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded",
                        help="'embedded', 'tiny-llava', a real-size random config (so400m-qwen2-0.5b, qwen2.5-vl-3b) "
                             "or a local model directory")
    parser.add_argument("--compile", action="store_true", help="torch.compile the engine's decode step")
    parser.add_argument("--skip-static", action="store_true", help="skip generate() with the static cache "
                        "(on CUDA it compiles for about a minute first)")
    parser.add_argument("--onnx", action="store_true", help="also export to ONNX and time the onnxruntime engine")
    parser.add_argument("--quantize", default="none", choices=("none", "int8", "int4"),
                        help="int8 | int4: also time the engine with quantised decoder weights (same rounds)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per query")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--instruction", default="where is the red ball?")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--plot", help="write a PNG bar chart of the results here")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    adapter = load(args.model, args.device, getattr(torch, args.dtype))
    image = (np.random.default_rng(0).random((args.height, args.width, 3)) * 255).astype(np.uint8)
    results = benchmark(adapter, Frame(image, stamp_ns=1, camera="bench"), args.instruction, args.tokens, args.repeats,
                        static_baseline=not args.skip_static, compile_decoder=args.compile, onnx=args.onnx,
                        quantize=args.quantize)
    where = machine_name(adapter.device)
    prompt = adapter.prepare(Frame(image, 1), Request(Task.ANSWER, args.instruction)).prompt_length
    print(f"model {args.model} ({adapter.family}), {args.dtype}, prompt {prompt} tokens, {args.tokens} new tokens, "
          f"batch 1, on {where}")
    print(format_table(results))
    if adapter.device.type == "cuda" and "engine" in results:
        bandwidth = copy_bandwidth(adapter.device)
        weights = decoder_weight_bytes(adapter.model)
        bound = bandwidth / weights
        results["bandwidth_Bps"], results["decode_bound_tok_s"] = bandwidth, bound
        engine = results["engine"]
        print(f"copy bandwidth {bandwidth / 1e9:.0f} GB/s; decoder weights {weights / 1e9:.2f} GB -> bound "
              f"{bound:.0f} tok/s; engine at {engine['decode_tok_s'] / bound:.0%} of it")
        print(f"vision encode: eager {engine['vision_encode_eager_s'] * 1e3:.2f} ms, CUDA graph "
              f"{engine['vision_encode_s'] * 1e3:.2f} ms; peak GPU memory "
              f"{torch.cuda.max_memory_allocated(adapter.device) / 2**30:.2f} GiB")
    if "decoder_weight_bytes" in results.get(f"engine {args.quantize}", {}):
        r = results[f"engine {args.quantize}"]
        print(f"{args.quantize} decoder weights {r['decoder_weight_bytes'] / 2**20:.2f} MiB vs "
              f"{r['decoder_weight_bytes_unquantized'] / 2**20:.2f} MiB at {args.dtype}; decode form "
              f"{r.get('decode_form')}")
    results["peak_rss_mb"] = peak_rss_mb()
    print(f"peak RSS of this process {results['peak_rss_mb']:.0f} MB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "device": where, "dtype": args.dtype, "tokens": args.tokens,
                       "results": results}, f, indent=2)
    if args.plot:
        timed = {name: r for name, r in results.items() if isinstance(r, dict) and "decode_tok_s" in r}
        bar_chart(args.plot, f"{args.model}, {args.dtype}, batch 1, {args.tokens} new tokens, {where}", [
            ("decode tokens/s (higher is better)", [(n, r["decode_tok_s"]) for n, r in timed.items()]),
            ("time to first token, ms (lower is better)", [(n, r["ttft_s"] * 1e3) for n, r in timed.items()])])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
