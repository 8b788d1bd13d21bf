"""Test-only entry point: the perception node with a fault plan (vlm_ros/testing/faults.py) in its hooks.

    python test/ros/faulty_node.py "model_error@2,image_callback@3-7" --ros-args -p model:=...

Only the hooks differ from `python -m vlm_ros.ros.node`; every other line that runs is the real node's.
"""

from __future__ import annotations

import sys

from vlm_ros.ros.node import PerceptionNode, main
from vlm_ros.testing.faults import FaultPlan


class FaultyPerceptionNode(PerceptionNode):
    def __init__(self, plan: FaultPlan):
        super().__init__()
        self.faults = plan
        self.get_logger().warning(f"TEST FAULT INJECTION ACTIVE: {plan.describe()}")

    def on_image_decoded(self, camera: str) -> None:
        self.faults.image_callback()

    def on_model_ready(self, pipeline) -> None:
        model = getattr(getattr(pipeline, "adapter", None), "model", None)
        if model is not None and self.faults.arm_model(model):  # counts real queries: armed after the warm-up
            self.get_logger().warning("TEST FAULT INJECTION: model faults armed")


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        raise SystemExit(f"usage: {sys.argv[0]} PLAN [--ros-args ...]")
    plan = FaultPlan.parse(sys.argv[1])  # a malformed plan stops here, before any node starts
    main(sys.argv[:1] + sys.argv[2:], node_type=lambda: FaultyPerceptionNode(plan))
