"""Evaluate the embedded model on held-out scenes: `python -m vlm_ros.embedded.evaluate [--weights DIR] [--n N]`.

Each held-out scene (seeds from EVAL_SEED_START + seed_start, disjoint from training) gets one question of
every kind that applies to it; answers come from greedy `model.generate` at batch 1 on the CPU.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlm_ros.embedded.model import DEFAULT_WEIGHTS_DIR, build_prompt, load
from vlm_ros.embedded.scenes import render_scene
from vlm_ros.embedded.tasks import KINDS, NONE_ANSWER, Example, make_example, parse_boxes
from vlm_ros.embedded.train import EVAL_SEED_START

IOU_THRESHOLD = 0.5


@dataclass
class Query:
    seed: int
    example: Example
    prediction: str
    seconds: float
    correct: bool


def describe_items(text: str) -> Counter:
    """Multiset of "size color shape" items in a describe answer ("a large red ball, ... and a small cube")."""
    parts = re.split(r",\s*|\s+and\s+", text.strip())
    return Counter(re.sub(r"^(a|an)\s+", "", p.strip()) for p in parts if p.strip())


def score(example: Example, prediction: str, width: int, height: int) -> bool:
    """Whether a prediction answers the example correctly (boxes: IoU >= 0.5 in source pixels)."""
    pred = prediction.strip()
    if example.kind == "describe":
        return describe_items(pred) == describe_items(example.answer)
    if example.kind == "ground":
        if not example.targets:
            return pred == NONE_ANSWER
        boxes = parse_boxes(pred, width, height)
        label, truth = example.targets[0]
        return bool(boxes) and boxes[0][0] == label and boxes[0][1].iou(truth) >= IOU_THRESHOLD
    if example.kind == "list":
        if not example.targets:
            return pred == NONE_ANSWER
        boxes = parse_boxes(pred, width, height)
        if len(boxes) != len(example.targets):
            return False
        unused = list(example.targets)
        for label, box in boxes:
            hit = next((t for t in unused if t[0] == label and t[1].iou(box) >= IOU_THRESHOLD), None)
            if hit is None:
                return False
            unused.remove(hit)
        return True
    return pred == example.answer


def generate_answer(model, processor, image: np.ndarray, instruction: str, max_new_tokens: int = 64) -> str:
    import torch

    inputs = processor(images=image, text=build_prompt(instruction), return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)  # (1, T_prompt + T_new)
    return processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def evaluate(
    weights: str | Path = DEFAULT_WEIGHTS_DIR,
    n: int = 100,
    seed_start: int = 0,
    kinds: tuple[str, ...] = KINDS,
    model_and_processor=None,
    progress: bool = False,
) -> dict:
    """Accuracy per kind, describe exact-set accuracy and CPU latency (p50/p95, seconds) over n held-out scenes."""
    import torch

    model, processor = model_and_processor or load(weights)
    model.to("cpu").eval()
    queries: list[Query] = []
    rng = np.random.default_rng(seed_start + 12345)
    it = range(n)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="eval", unit="scene", file=sys.stderr)
    with torch.inference_mode():
        for i in it:
            seed = EVAL_SEED_START + seed_start + i
            scene = render_scene(seed)
            for kind in kinds:
                try:
                    ex = make_example(scene, rng, kind)
                except ValueError:  # this kind does not apply to this scene
                    continue
                t = time.perf_counter()
                pred = generate_answer(model, processor, scene.image, ex.instruction)
                dt = time.perf_counter() - t
                queries.append(Query(seed, ex, pred, dt, score(ex, pred, scene.width, scene.height)))

    def acc(sel) -> float | None:
        sel = list(sel)
        return float(np.mean([q.correct for q in sel])) if sel else None

    lat = np.array([q.seconds for q in queries]) if queries else np.zeros(1)
    result = {
        "grounding": acc(q for q in queries if q.example.kind == "ground" and q.example.targets),
        "grounding_absent": acc(q for q in queries if q.example.kind == "ground" and not q.example.targets),
        "counting": acc(q for q in queries if q.example.kind == "count"),
        "color": acc(q for q in queries if q.example.kind == "color"),
        "shape": acc(q for q in queries if q.example.kind == "shape"),
        "existence": acc(q for q in queries if q.example.kind == "exist"),
        "left_right": acc(q for q in queries if q.example.kind == "relation"),
        "describe_exact_set": acc(q for q in queries if q.example.kind == "describe"),
        "list_all": acc(q for q in queries if q.example.kind == "list"),
        "queries": len(queries),
        "latency_p50_s": float(np.percentile(lat, 50)),
        "latency_p95_s": float(np.percentile(lat, 95)),
        "scenes": n,
        "seed_start": EVAL_SEED_START + seed_start,
    }
    result["_queries"] = queries
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS_DIR)
    ap.add_argument("--n", type=int, default=100, help="held-out scenes (one question of each kind per scene)")
    ap.add_argument("--seed-start", type=int, default=0, help="offset into the held-out seed range")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--quantize", default="none", choices=("none", "int8"), help="int8 decoder weights")
    ap.add_argument("--show-errors", type=int, default=0, help="print this many wrong answers")
    args = ap.parse_args(argv)
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model_and_processor = None
    if args.quantize == "int8":
        from vlm_ros.quantize import quantize_decoder_int8

        model_and_processor = load(args.weights)
        quantize_decoder_int8(model_and_processor[0])
    res = evaluate(args.weights, args.n, args.seed_start, model_and_processor=model_and_processor, progress=True)
    res["quantize"] = args.quantize
    queries = res.pop("_queries")
    wrong = [q for q in queries if not q.correct][: args.show_errors]
    for q in wrong:
        print(f"[{q.example.kind}] {q.example.instruction!r}: want {q.example.answer!r}, got {q.prediction!r}")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
