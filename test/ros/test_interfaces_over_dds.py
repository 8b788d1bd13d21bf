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
    from vlm_ros.srv import Query

    node, client = query_client
    resp = call(node, client, instruction="where is the red mug?", ground=True, max_new_tokens=7)
    assert resp.status == Query.Response.OK
    assert resp.answer == "ground: where is the red mug?"
    assert resp.header.stamp.sec == 1_700_000_000 and resp.header.stamp.nanosec == 123_456_789
    assert resp.header.frame_id == "front_optical_frame"
    assert resp.camera == "front"
    (target,) = resp.targets
    assert target.label == "red mug"
    assert (target.x_min, target.y_min, target.x_max, target.y_max) == (10.5, 20.0, 110.25, 220.0)
    assert math.isclose(target.score, 0.75)
    assert target.position_valid and (target.position.x, target.position.y, target.position.z) == (0.1, -0.2, 1.5)
    assert resp.timings.generated_tokens == 7
    assert math.isclose(resp.timings.total, 0.031, rel_tol=1e-6)


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
