#!/usr/bin/env python3
"""Generate the small moving-scene bag committed beside this script: `test/bags/moving_small/`.

    python test/bags/make_tracking_bag.py [--out DIR]

vlm_ros.embedded.motion's default script squeezed into 3 s (a cube sliding, a ball hidden by a cube passing in
front for about 0.6 s, a star leaving the view for about 1.2 s and coming back, the camera moving and turning), at
30 Hz (91 frames), written by vlm_ros.tools.tracking_bag: 640x480 JPEG CompressedImage (quality 60), registered
16UC1 depth in millimetres at 80x60, CameraInfo for both, /clock, and the per-frame truth `tracking_truth.json`.
About 2.4 MB: 640x480 colour keeps the embedded model naming the objects (at 320x240 it misnames them), and the
depth at 1/8 of the colour resolution keeps the bag small (at 160x120 it is 38 KB a frame, more than the JPEG).
The test suite regenerates it into a temporary directory and compares (test/ros/test_bags.py); the regression
test replays it into the node with a Track goal (test/ros/test_regression.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # the source tree, when run from a checkout

from vlm_ros.tools.tracking_bag import write_tracking_bag  # noqa: E402

BAG_NAME = "moving_small"
PARAMS: dict = dict(seconds=3.0, fps=30.0, width=640, height=480, depth_scale=8, jpeg_quality=60, camera="front")


def make(out: Path) -> Path:
    return write_tracking_bag(out, overwrite=True, **PARAMS)


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
