"""Tier 2: the package's own Query service between two processes over real DDS (loopback only)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import requires_ros

pytestmark = requires_ros

SERVER = str(Path(__file__).with_name("placeholder_query_server.py"))


def call(node, client, **fields):
    import rclpy

    from vlm_ros.srv import Query

    request = Query.Request(**fields)
    future = client.call_async(request)
    rclpy.spin_until_future_complete(node, future, timeout_sec=10.0)
    assert future.done(), "no response within 10 s"
    return future.result()


@pytest.fixture
def query_client(rclpy_context, start_process):
    import rclpy

    from vlm_ros.srv import Query

    server = start_process([SERVER], "placeholder_server")
    server.wait_for_log("placeholder server ready")
    node = rclpy.create_node("query_test_client")
    client = node.create_client(Query, "/vlm/query")
    assert client.wait_for_service(timeout_sec=15.0), "service did not appear:\n" + server.log()
    yield node, client
    node.destroy_node()


def test_query_round_trip_carries_answer_targets_header_and_timings(query_client):
    import numpy as np
    from placeholder_query_server import grounded_targets

    from vlm_ros.msg import GroundedTarget
    from vlm_ros.ros.convert import target_from_msg
    from vlm_ros.srv import Query

    node, client = query_client
    resp = call(node, client, instruction="where is the red mug?", ground=True, max_new_tokens=7)
    assert resp.status == Query.Response.OK
    assert resp.answer == "ground: where is the red mug?"
    assert resp.header.stamp.sec == 1_700_000_000 and resp.header.stamp.nanosec == 123_456_789
    assert resp.header.frame_id == "front_optical_frame"
    assert resp.camera == "front"
    mug, handle, shadow = resp.targets
    # a box target with a depth-layer mask and 3-D geometry
    assert mug.label == "red mug" and mug.kind == GroundedTarget.KIND_BOX
    assert (mug.x_min, mug.y_min, mug.x_max, mug.y_max) == (10.5, 20.0, 110.25, 220.0)
    assert (mug.point_x, mug.point_y) == (60.375, 120.0)  # the box centre
    assert math.isclose(mug.score, 0.75)
    assert (mug.mask.width, mug.mask.height, mug.mask.encoding, mug.mask.step) == (100, 200, "mono8", 100)
    assert (mug.mask_x_offset, mug.mask_y_offset, mug.mask_source) == (10, 20, GroundedTarget.MASK_DEPTH_LAYER)
    pixels = np.frombuffer(bytes(mug.mask.data), np.uint8).reshape(200, 100)
    assert set(np.unique(pixels)) == {0, 255} and (pixels[20:200, 10:60] == 255).all() and pixels[0, 0] == 0
    assert mug.position_valid and (mug.position.x, mug.position.y, mug.position.z) == (0.1, -0.2, 1.5)
    center, size = mug.extent_center, mug.extent_size
    assert np.allclose((center.x, center.y, center.z), (0.1, -0.2, 1.485))
    assert np.allclose((size.x, size.y, size.z), (0.1, 0.2, 0.07))
    assert (mug.valid_points, mug.geometry_method) == (9500, GroundedTarget.METHOD_DEPTH_LAYER)
    assert math.isclose(mug.valid_fraction, 0.95, rel_tol=1e-6)
    # a point target: no box, a 3-D point of size 0
    assert handle.kind == GroundedTarget.KIND_POINT
    assert (handle.x_min, handle.y_min, handle.x_max, handle.y_max) == (0, 0, 0, 0)
    assert (handle.point_x, handle.point_y) == (100.5, 90.25) and handle.mask.width == 0 and handle.mask_source == ""
    assert handle.position_valid and handle.geometry_method == GroundedTarget.METHOD_POINT
    assert (handle.extent_size.x, handle.extent_size.y, handle.extent_size.z) == (0.0, 0.0, 0.0)
    # no depth: invalid 3-D, all zeros, no method, no mask
    assert not shadow.position_valid and shadow.geometry_method == "" and shadow.valid_points == 0
    assert (shadow.position.x, shadow.position.y, shadow.position.z) == (0.0, 0.0, 0.0) and shadow.mask.width == 0
    # and back to core types, as sent
    sent = grounded_targets()
    back = [target_from_msg(t) for t in resp.targets]
    assert np.array_equal(back[0].mask.data, sent[0].mask.data) and back[0].mask.source == "depth_layer"
    assert np.allclose(back[0].shape.extent_min, sent[0].shape.extent_min)
    assert np.allclose(back[0].shape.extent_max, sent[0].shape.extent_max)
    assert (back[1].box, back[1].point, back[1].shape.method) == (None, (100.5, 90.25), sent[1].shape.method)
    assert (back[2].position, back[2].shape, back[2].mask) == (None, None, None)
    assert resp.timings.generated_tokens == 7
    assert math.isclose(resp.timings.ground, 0.004) and math.isclose(resp.timings.segment, 0.003)
    assert math.isclose(resp.timings.total, 0.038, rel_tol=1e-6)


def test_query_status_codes_and_defaults_round_trip(query_client):
    from vlm_ros.srv import Query

    node, client = query_client
    resp = call(node, client, instruction="", camera="front")
    assert resp.status == Query.Response.OK
    assert resp.answer == "describe: "  # empty instruction -> describe task
    assert resp.targets == []
    assert resp.timings.generated_tokens == 32  # 0 -> the node's default budget

    bad = call(node, client, instruction="hi", camera="rear")
    assert bad.status == Query.Response.INVALID_ARGUMENT == 4
    assert "rear" in bad.message
    # Every status constant the interface documents is present with its documented value.
    codes = {n: getattr(Query.Response, n) for n in
             ("OK", "NOT_READY", "NO_FRAME", "STALE_FRAME", "INVALID_ARGUMENT", "BUSY", "TIMEOUT", "MODEL_ERROR")}
    assert codes == {"OK": 0, "NOT_READY": 1, "NO_FRAME": 2, "STALE_FRAME": 3, "INVALID_ARGUMENT": 4,
                     "BUSY": 5, "TIMEOUT": 6, "MODEL_ERROR": 7}
