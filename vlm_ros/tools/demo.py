"""The main job, end to end: the node on the embedded default model answers sample questions on a replayed bag.

    python -m vlm_ros.tools.demo [--bag DIR] [--out DIR]

Starts the perception node (subprocess, sim time), replays the bundled bag (scenes_small: installed
under share/vlm_ros/bags, in a checkout test/bags), asks the instructions of its sidecar at their times, prints
every answer with its grounded targets (boxes, masks, 3-D centroids and extents), the accuracy, the targets' mask
IoU and 3-D errors against the truth, and the latency, and saves the node's annotated images (boxes, mask
outlines) to --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vlm_ros.tools import regression

BAG_NAME = "scenes_small"
CHECKOUT_BAG = Path(__file__).resolve().parents[2] / "test" / "bags" / BAG_NAME


def default_bag() -> Path:
    """The bundled bag in the installed package's share directory, else in this checkout (not installed)."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:  # no ROS 2 on the path: only a checkout can have the bag
        return CHECKOUT_BAG
    try:
        installed = Path(get_package_share_directory("vlm_ros")) / "bags" / BAG_NAME
    except (PackageNotFoundError, OSError):  # not installed, or no AMENT_PREFIX_PATH at all
        return CHECKOUT_BAG
    return installed if installed.is_dir() else CHECKOUT_BAG


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bag", type=Path, default=None, help="rosbag2 with a ground-truth sidecar (default: "
                        f"the bundled {BAG_NAME})")
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="folder for annotated images")
    parser.add_argument("--model", default="", help="model directory ('' = the embedded default model)")
    args = parser.parse_args(argv)
    args.bag = args.bag or default_bag()
    print(f"replaying {args.bag} into the perception node ({args.model or 'embedded default model'})")
    return regression.main([str(args.bag), "--start-node", "--model", args.model, "--annotated-dir", str(args.out)])


if __name__ == "__main__":
    raise SystemExit(main())
