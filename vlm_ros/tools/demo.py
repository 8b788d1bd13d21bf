"""The main job, end to end: the node on the embedded default model answers sample questions on a replayed bag.

    python -m vlm_ros.tools.demo [--bag DIR] [--out DIR]

Starts the perception node (subprocess, sim time), replays the bundled bag (test/bags/scenes_small), asks the
instructions of its sidecar at their times, prints every answer with its grounded targets (boxes, masks, 3-D
centroids and extents), the accuracy, the targets' mask IoU and 3-D errors against the truth, and the latency, and
saves the node's annotated images (boxes, mask outlines) to --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vlm_ros.tools import regression

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BAG = REPO / "test" / "bags" / "scenes_small"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bag", type=Path, default=DEFAULT_BAG)
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="folder for annotated images")
    parser.add_argument("--model", default="", help="model directory ('' = the embedded default model)")
    args = parser.parse_args(argv)
    print(f"replaying {args.bag} into the perception node ({args.model or 'embedded default model'})")
    return regression.main([str(args.bag), "--start-node", "--model", args.model, "--annotated-dir", str(args.out)])


if __name__ == "__main__":
    raise SystemExit(main())
