#!/usr/bin/env python3
"""Generate the small replay bag committed beside this script: `test/bags/scenes_small/`.

    python test/bags/make_test_bag.py [--out DIR]

Three rendered scenes (seeds in PARAMS), each on camera for 2 s at 2 fps (4 frames), 320x240: JPEG
CompressedImage colour, raw 16UC1 depth, CameraInfo for both, /clock at 20 Hz, and the ground-truth sidecar
`groundtruth.json` (objects, boxes, masks, 3-D positions and extents, instructions with the time to ask them and
the answers).
About 2 MB. The test suite regenerates it into a temporary directory and compares (test/ros/test_bags.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # the source tree, when run from a checkout

from vlm_ros.tools.bags import write_scene_bag  # noqa: E402

BAG_NAME = "scenes_small"
PARAMS: dict = dict(
    storage="mcap",
    seconds=6.0,
    fps=2.0,
    camera="front",
    colour="compressed",
    compressed_format="jpeg",
    jpeg_quality=85,
    depth_encoding="16UC1",
    scenes=(1, 6, 9),
    instructions=("describe", "ground", "count", "exist", "color"),
    width=320,
    height=240,
    clock_hz=20.0,
    noise=2.0,
)


def make(out: Path) -> Path:
    return write_scene_bag(out, overwrite=True, **PARAMS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / BAG_NAME, help="bag directory to (re)write")
    args = parser.parse_args()
    path = make(args.out)
    size = sum(f.stat().st_size for f in path.iterdir())
    print(f"wrote {path} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
