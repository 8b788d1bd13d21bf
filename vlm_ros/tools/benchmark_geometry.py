"""Geometry benchmark: milliseconds per target for the mask and the 3-D geometry at 640x480 on one CPU thread.

    python -m vlm_ros.tools.benchmark_geometry [--repeats N] [--json out.json]

A synthetic 640x480 depth image (a table plane seen from above at an angle, a wall behind it) holds one round
object standing on the table, of each box size in turn; `core.geometry.target_geometry` is timed with the box
(depth-layer mask, then centroid and extent: what the pipeline runs per target when no segmenter is set) and with
the object's exact mask (the MASK method: a segmenter's mask). numpy/OpenCV threads are set to 1 before numpy
loads. Prints the median and 95th percentile per target over --repeats rounds (each round times every size in
turn: a shared machine's speed drifts), as this thread's CPU time (what the work costs, whatever else the machine
runs) and as wall time. This is a benchmark, not a test: nothing fails on a slow machine.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from vlm_ros.core.geometry import target_geometry  # noqa: E402
from vlm_ros.core.types import Box, CameraIntrinsics, Mask  # noqa: E402

WIDTH, HEIGHT = 640, 480
K = CameraIntrinsics(fx=525.0, fy=525.0, cx=319.5, cy=239.5)
BOX_SIZES = (40, 80, 160, 320, 480)  # object diameter in pixels; 480 fills the image's height


def scene(diameter: int) -> tuple[np.ndarray, Box, Mask]:
    """(depth (H, W) float32, the object's box, its exact mask): a ball of ``diameter`` pixels on a table."""
    pitch, cam_height, wall = math.radians(35.0), 0.7, 2.2
    ray_v = (np.arange(HEIGHT) - K.cy) / K.fy  # (H,)
    down = math.cos(pitch) * ray_v + math.sin(pitch)
    forward = -math.sin(pitch) * ray_v + math.cos(pitch)
    z_table = np.where(down > 1e-6, cam_height / np.maximum(down, 1e-6), np.inf)
    z_plane = np.where(z_table * forward < wall, z_table, wall / forward)  # (H,) table, else wall
    depth = np.repeat(z_plane[:, None], WIDTH, axis=1).astype(np.float32)  # (H, W)
    base_row = min(HEIGHT - 1, HEIGHT // 2 + diameter // 2)
    z_base = float(z_plane[base_row])
    radius_m = diameter / 2 * z_base / K.fx
    vv, uu = np.mgrid[0:HEIGHT, 0:WIDTH]
    centre_v = base_row + 1 - diameter / 2
    rho = np.hypot((uu + 0.5 - WIDTH / 2) / (diameter / 2), (vv + 0.5 - centre_v) / (diameter / 2))
    inside = rho < 1.0
    depth[inside] = (z_base - radius_m * np.sqrt(1.0 - rho[inside] ** 2)).astype(np.float32)
    rows, cols = np.nonzero(inside)
    box = Box(float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1))
    patch = inside[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    mask = Mask(int(cols.min()), int(rows.min()), patch, "segmenter")
    return depth, box, mask


def run(repeats: int) -> dict:
    cv2.setNumThreads(1)
    scenes = {d: scene(d) for d in BOX_SIZES}
    methods = {"depth_layer": "box", "mask": "mask"}
    cpu = {m: {d: [] for d in BOX_SIZES} for m in methods}
    wall = {m: {d: [] for d in BOX_SIZES} for m in methods}
    for _ in range(repeats + 1):  # the first round warms up and is not counted
        for d, (depth, box, mask) in scenes.items():
            for method, given in methods.items():
                c0, t0 = time.thread_time(), time.perf_counter()
                geometry = target_geometry(depth, K, (WIDTH, HEIGHT), **{given: box if given == "box" else mask})
                wall[method][d].append(time.perf_counter() - t0)
                cpu[method][d].append(time.thread_time() - c0)
                assert geometry.position is not None and geometry.shape.method.value == method, (method, d)

    def stats(t: list[float]) -> dict:
        return {"median": float(np.median(t[1:]) * 1e3), "p95": float(np.percentile(t[1:], 95) * 1e3)}

    return {
        "machine": f"{platform.processor() or platform.machine()} CPU, 1 thread",
        "image": f"{WIDTH}x{HEIGHT}",
        "repeats": repeats,
        "cpu_ms_per_target": {m: {str(d): stats(t) for d, t in by_size.items()} for m, by_size in cpu.items()},
        "wall_ms_per_target": {m: {str(d): stats(t) for d, t in by_size.items()} for m, by_size in wall.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--json", type=str, default="", help="also write the figures to this file")
    args = parser.parse_args(argv)
    result = run(args.repeats)
    print(f"{result['machine']}, {result['image']}, {args.repeats} rounds: ms per target, median / p95")
    print(f"{'object px':>9s} | {'box -> depth layer + 3-D':^27s} | {'given mask -> 3-D':^27s}")
    print(f"{'':>9s} | {'CPU':^13s} {'wall':^13s} | {'CPU':^13s} {'wall':^13s}")
    for d in BOX_SIZES:
        cells = []
        for method in ("depth_layer", "mask"):
            for kind in ("cpu_ms_per_target", "wall_ms_per_target"):
                t = result[kind][method][str(d)]
                cells.append(f"{t['median']:5.2f} / {t['p95']:5.2f}")
        print(f"{d:>9d} | {cells[0]} {cells[1]} | {cells[2]} {cells[3]}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
