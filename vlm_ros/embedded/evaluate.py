"""Evaluate the embedded model on held-out scenes: `python -m vlm_ros.embedded.evaluate [--weights DIR] [--n N]`.

Each held-out scene (seeds from EVAL_SEED_START + seed_start, disjoint from training) gets one question of
every kind that applies to it; answers come from greedy `model.generate` at batch 1 on the CPU, and their boxes
are read by the node's own parser (EmbeddedAdapter.parse_text).
Grounding answers also get the node's geometry: every predicted box matched to a true object (same label, box
IoU >= 0.5) goes through `core.geometry.target_geometry` with the scene's depth (the depth-layer mask, centroid and
extent), scored against the renderer's truth (vlm_ros.tools.geometry_metrics: mask IoU, centroid, extent and
object-centre errors). --depth-noise adds sensor-like noise to that depth first.
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

from vlm_ros.core.geometry import target_geometry
from vlm_ros.core.types import Box, Frame, Target
from vlm_ros.embedded.model import DEFAULT_WEIGHTS_DIR, load
from vlm_ros.embedded.prompt import LOC_BINS, build_prompt
from vlm_ros.embedded.scenes import Scene, render_scene
from vlm_ros.embedded.tasks import KINDS, NONE_ANSWER, Example, make_example
from vlm_ros.embedded.train import EVAL_SEED_START
from vlm_ros.models.llava import EmbeddedAdapter
from vlm_ros.tools.geometry_metrics import GeometryScore, GeometryTruth, score_target, summarize, summary_lines

IOU_THRESHOLD = 0.5


@dataclass
class Query:
    seed: int
    example: Example
    prediction: str
    seconds: float
    correct: bool
    geometry: list[GeometryScore]  # one per predicted box matched to a true object


def describe_items(text: str) -> Counter:
    """Multiset of "size color shape" items in a describe answer ("a large red ball, ... and a small cube")."""
    parts = re.split(r",\s*|\s+and\s+", text.strip())
    return Counter(re.sub(r"^(a|an)\s+", "", p.strip()) for p in parts if p.strip())


def score(example: Example, prediction: str, frame: Frame, loc_bins: int = LOC_BINS) -> bool:
    """Whether a prediction answers the example correctly (boxes, as the node reads them: IoU >= 0.5 in source
    pixels of `frame`)."""
    pred = prediction.strip()
    if example.kind == "describe":
        return describe_items(pred) == describe_items(example.answer)
    if example.kind == "ground":
        if not example.targets:
            return pred == NONE_ANSWER
        boxes = EmbeddedAdapter.parse_text(pred, frame, loc_bins).boxes
        label, truth = example.targets[0]
        return bool(boxes) and boxes[0][0] == label and boxes[0][1].iou(truth) >= IOU_THRESHOLD
    if example.kind == "list":
        if not example.targets:
            return pred == NONE_ANSWER
        boxes = EmbeddedAdapter.parse_text(pred, frame, loc_bins).boxes
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


def matched_boxes(example: Example, boxes: list[tuple[str, Box]]) -> list[tuple[tuple[str, Box], Box]]:
    """(true target, predicted box) pairs: for each true target the unused predicted box of the same label with the
    highest IoU, if that is at least IOU_THRESHOLD."""
    unused, pairs = list(boxes), []
    for label, truth in example.targets:
        candidates = [(box.iou(truth), i) for i, (lab, box) in enumerate(unused) if lab == label]
        if candidates and max(candidates)[0] >= IOU_THRESHOLD:
            i = max(candidates)[1]
            pairs.append(((label, truth), unused.pop(i)[1]))
    return pairs


def noisy_depth(depth: np.ndarray, sigma_at_1m: float, seed: int) -> np.ndarray:
    """Depth with Gaussian noise of sigma_at_1m x z^2 (stereo / structured light), rounded to mm (16UC1)."""
    rng = np.random.default_rng((seed, 7))
    noisy = depth + rng.standard_normal(depth.shape).astype(np.float32) * np.float32(sigma_at_1m) * depth * depth
    return np.round(noisy * 1000.0) / 1000.0


def geometry_scores(scene: Scene, example: Example, prediction: str, depth: np.ndarray) -> list[GeometryScore]:
    """The geometry of each predicted box matched to a true object, scored against the renderer's truth."""
    scores = []
    predicted = EmbeddedAdapter.parse_text(prediction, Frame(scene.image), LOC_BINS).boxes
    for (label, truth_box), box in matched_boxes(example, predicted):
        index = next(i for i, o in enumerate(scene.objects) if o.box == truth_box and o.label == label)
        geometry = target_geometry(depth, scene.intrinsics, (scene.width, scene.height), box=box)
        target = Target(label, box, mask=geometry.mask, position=geometry.position, shape=geometry.shape)
        truth = GeometryTruth.of(scene.objects[index], scene.object_mask(index))
        scores.append(score_target(target, truth, scene.width, scene.height))
    return scores


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
    depth_noise: float = 0.0,
    partial: bool = False,
) -> dict:
    """Accuracy per kind, describe exact-set accuracy, CPU latency (p50/p95, seconds) and the geometry of the
    grounded targets (see the module docstring) over n held-out scenes."""
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
            scene = render_scene(seed, partial=partial)
            frame = Frame(scene.image)
            depth = noisy_depth(scene.depth, depth_noise, seed) if depth_noise > 0 else scene.depth
            for kind in kinds:
                try:
                    ex = make_example(scene, rng, kind)
                except ValueError:  # this kind does not apply to this scene
                    continue
                t = time.perf_counter()
                pred = generate_answer(model, processor, scene.image, ex.instruction)
                dt = time.perf_counter() - t
                geometry = geometry_scores(scene, ex, pred, depth) if ex.kind in ("ground", "list") else []
                queries.append(Query(seed, ex, pred, dt, score(ex, pred, frame), geometry))

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
        "geometry": summarize([g for q in queries for g in q.geometry]),
        "depth_noise_at_1m": depth_noise,
    }
    result["_queries"] = queries
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS_DIR)
    ap.add_argument("--n", type=int, default=100, help="held-out scenes (one question of each kind per scene)")
    ap.add_argument("--seed-start", type=int, default=0, help="offset into the held-out seed range")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--quantize", default="none", choices=("none", "int8", "int4"), help="decoder weights")
    ap.add_argument("--show-errors", type=int, default=0, help="print this many wrong answers")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated question kinds (default: all: {KINDS})")
    ap.add_argument("--depth-noise", type=float, default=0.0, metavar="SIGMA",
                    help="Gaussian depth noise for the geometry, SIGMA metres at 1 m growing with z^2, rounded to mm")
    ap.add_argument("--partial", action="store_true",
                    help="partial scenes: objects cut by the image's sides or mostly hidden (as a moving camera sees)")
    args = ap.parse_args(argv)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        ap.error(f"unknown kinds {sorted(unknown)}; known: {KINDS}")
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model_and_processor = None
    if args.quantize != "none":
        from vlm_ros.quantize import quantize_decoder

        model_and_processor = load(args.weights)
        quantize_decoder(model_and_processor[0], args.quantize)
    res = evaluate(args.weights, args.n, args.seed_start, kinds, model_and_processor=model_and_processor, progress=True,
                   depth_noise=args.depth_noise, partial=args.partial)
    res["quantize"] = args.quantize
    queries = res.pop("_queries")
    wrong = [q for q in queries if not q.correct][: args.show_errors]
    for q in wrong:
        print(f"[{q.example.kind}] {q.example.instruction!r}: want {q.example.answer!r}, got {q.prediction!r}")
    print(json.dumps(res, indent=2))
    print("\n".join(summary_lines(res["geometry"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
