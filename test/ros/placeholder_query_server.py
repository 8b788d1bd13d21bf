"""A stand-in Query server for the interface round-trip test: no model, answers from the request alone.

It exercises the real generated interfaces and vlm_ros.ros.convert over DDS; the perception node proper is
tested in its own tests.
"""

import rclpy
from rclpy.node import Node
from vlm_ros.srv import Query

from vlm_ros.core.requests import QuerySettings, build_request
from vlm_ros.core.types import Answer, Box, Status, Target, Timings
from vlm_ros.ros.convert import fill_result, make_header, query_from_msg

STAMP_NS = 1_700_000_000_123_456_789


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
            targets=[Target("red mug", Box(10.5, 20.0, 110.25, 220.0), 0.75, position=(0.1, -0.2, 1.5))]
            if core.task.value == "ground" else [],
            timings=Timings(queue_wait=0.001, prefill=0.01, decode=0.02),
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
