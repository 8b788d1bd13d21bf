"""The node with backend:=remote, over DDS, against a real `transformers serve` peer on 127.0.0.1.

Same service, targets and diagnostics as with a local model: answers equal the local torch backend's on the
same frame; diagnostics name the server; a server that goes down gives MODEL_ERROR, the node keeps running,
and the query after the server comes back succeeds.
"""

from __future__ import annotations

import time

import pytest
from conftest import requires_ros
from serve_peer import ServePeer, requires_serve

pytestmark = [requires_ros, requires_serve, pytest.mark.slow]


@pytest.fixture
def harness(rclpy_context):
    from harness import Harness

    h = Harness("remote_client")
    yield h
    h.close()


def test_node_on_a_remote_server_answers_like_the_local_model_and_survives_the_server_going_down(
        start_process, harness, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.action import ActionClient

    from vlm_ros.action import Query as QueryAction
    from vlm_ros.core.requests import QuerySettings, build_request
    from vlm_ros.core.types import Frame
    from vlm_ros.embedded.scenes import render_scene
    from vlm_ros.models.registry import load_adapter
    from vlm_ros.pipeline import Pipeline
    from vlm_ros.ros.convert import query_from_msg
    from vlm_ros.srv import Query

    peer = ServePeer(tmp_path / "serve.log")
    peer.start()
    try:
        start_process(["-m", "vlm_ros.ros.node", "--ros-args", "-p", "backend:=remote",
                       "-p", f"remote.base_url:={peer.base_url}", "-p", "remote.image_format:=png",
                       "-p", "remote.retries:=1", "-p", "diagnostics_period_s:=0.2",
                       # frame freshness is not under test here; a loaded CI machine once starved the camera thread
                       "-p", "max_frame_age_s:=30.0"], "perception_node")
        harness.wait_for_service()
        scene = render_scene(7)
        harness.start_camera(scene.image, rate_hz=10)
        harness.wait_until_answering(timeout=120)

        local = Pipeline(load_adapter("", "embedded", "cpu"))
        for fields in ({"instruction": "detect all objects", "ground": True, "max_new_tokens": 48, "timeout_s": 100.0},
                       {"instruction": f"what color is the {scene.objects[0].shape}?", "max_new_tokens": 16,
                        "timeout_s": 100.0}):
            resp = harness.query(timeout=120, **fields)
            request, _ = build_request(query_from_msg(Query.Request(**fields)), QuerySettings())
            expected = local.answer(Frame(scene.image), request)
            assert (resp.status, expected.status) == (Query.Response.OK, Query.Response.OK), (resp.message,
                                                                                            expected.message)
            assert resp.answer == expected.text and resp.message == expected.message
            got = [(t.label, t.x_min, t.y_min, t.x_max, t.y_max) for t in resp.targets]
            assert got == [(t.label, *(pytest.approx(v, abs=1e-3) for v in (t.box.x_min, t.box.y_min, t.box.x_max,
                                                                               t.box.y_max))) for t in expected.targets]

        diagnostics: dict[str, str] = {}
        harness.node.create_subscription(
            DiagnosticArray, "/diagnostics",
            lambda msg: diagnostics.update({kv.key: kv.value for s in msg.status if s.name == "vlm: model"
                                            for kv in s.values}), 10)
        deadline = time.monotonic() + 10
        while "remote_last_latency_s" not in diagnostics and time.monotonic() < deadline:
            time.sleep(0.1)
        assert peer.base_url in diagnostics["backend"] and diagnostics["server"] == peer.base_url
        assert float(diagnostics["remote_last_latency_s"]) > 0
        assert diagnostics["warmup_s"] == ""  # no warm-up query is sent to a remote server

        # the action streams the server's tokens as feedback
        client = ActionClient(harness.node, QueryAction, "/vlm/query")
        assert client.wait_for_server(timeout_sec=10)
        feedback: list[tuple[int, str]] = []
        send = client.send_goal_async(QueryAction.Goal(instruction="", max_new_tokens=48, timeout_s=100.0),
                                      feedback_callback=lambda m: feedback.append((m.feedback.generated_tokens,
                                                                                   m.feedback.partial_answer)))
        t0 = time.monotonic()
        while not send.done() and time.monotonic() - t0 < 10:
            time.sleep(0.02)
        result = send.result().get_result_async()
        while not result.done() and time.monotonic() - t0 < 120:
            time.sleep(0.02)
        done = result.result().result
        assert done.status == Query.Response.OK, done.message
        assert [n for n, _ in feedback] == list(range(1, done.timings.generated_tokens + 1))
        assert feedback[-1][1].strip() == done.answer  # a description: no location tokens to strip

        peer.stop()
        down = harness.query(timeout=30, instruction="what is this?", timeout_s=10.0)
        assert down.status == Query.Response.MODEL_ERROR and "connection refused" in down.message, down.message
        peer.start()
        up = harness.query(timeout=120, instruction="what is this?", timeout_s=100.0)
        assert up.status == Query.Response.OK, up.message
    finally:
        peer.stop()
