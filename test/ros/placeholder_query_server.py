"""A stand-in Query server for the interface round-trip test: no model, answers from the request alone.

It exercises the real generated interfaces and vlm_ros.ros.convert over DDS; the perception node proper is
tested in its own tests.
"""

import numpy as np
import rclpy
from rclpy.node import Node

from vlm_ros.core.requests import QuerySettings, build_request
from vlm_ros.core.types import Answer, Box, GeometryMethod, Mask, Shape3D, Status, Target, Timings
from vlm_ros.ros.convert import fill_result, make_header, query_from_msg
from vlm_ros.srv import Query

STAMP_NS = 1_700_000_000_123_456_789
MUG_MASK = np.zeros((200, 100), bool)  # an L: the mug's body and handle
MUG_MASK[20:200, 10:60] = True
MUG_MASK[60:120, 60:95] = True


def grounded_targets() -> list[Target]:
    """A box target with a mask and 3-D geometry, a point target with a 3-D point, a box target without 3-D."""
    return [
        Target("red mug", Box(10.5, 20.0, 110.25, 220.0), 0.75, position=(0.1, -0.2, 1.5),
               mask=Mask(10, 20, MUG_MASK, "depth_layer"),
               shape=Shape3D((0.05, -0.3, 1.45), (0.15, -0.1, 1.52), 9500, 0.95, GeometryMethod.DEPTH_LAYER)),
        Target("handle", None, 0.5, position=(0.2, -0.1, 1.4), point=(100.5, 90.25),
               shape=Shape3D((0.2, -0.1, 1.4), (0.2, -0.1, 1.4), 25, 1.0, GeometryMethod.POINT)),
        Target("shadow", Box(0.0, 0.0, 5.0, 5.0)),
    ]


class PlaceholderServer(Node):
    def __init__(self):
        super().__init__("placeholder_vlm")
        self.create_service(Query, "/vlm/query", self.on_query)

    def on_query(self, request, response):
        settings = QuerySettings(default_timeout_s=5.0, default_max_new_tokens=32)
        core, _ = build_request(query_from_msg(request), settings)
        if request.camera not in ("", "front"):
            answer = Answer(Status.INVALID_ARGUMENT, message=f"unknown camera '{request.camera}'")
            return fill_result(response, answer, None, request.camera)
        answer = Answer(
            Status.OK,
            text=f"{core.task.value}: {core.instruction}",
            targets=grounded_targets() if core.task.value == "ground" else [],
            timings=Timings(queue_wait=0.001, prefill=0.01, decode=0.02, ground=0.004, segment=0.003),
            generated_tokens=core.max_new_tokens,
        )
        return fill_result(response, answer, make_header(STAMP_NS, "front_optical_frame"), "front")


def main():
    rclpy.init()
    node = PlaceholderServer()
    node.get_logger().info("placeholder server ready")
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
