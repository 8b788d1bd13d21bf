"""Tier 2: the perception node in a subprocess, over DDS on loopback, on a tiny random LLaVA.

The answers of a random model are meaningless; these tests check the node's contract: lifecycle, statuses,
queueing, deadlines, headers (the action: test_node_action.py). Answer quality is tested with the embedded model
elsewhere.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import requires_ros

pytestmark = requires_ros


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from vlm_ros.testing.tiny import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


def start_node(start_process, model, *params: str):
    args = ["-m", "vlm_ros.ros.node", "--ros-args", "-p", f"model:={model}", "-p", "device:=cpu",
            "-p", "max_new_tokens_limit:=4096"]
    for p in params:
        args += ["-p", p]
    return start_process(args, "perception_node")


@pytest.fixture
def harness(rclpy_context):
    from harness import Harness

    h = Harness()
    yield h
    h.close()


def image(seed=0, h=120, w=160):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def test_lifecycle_not_ready_then_no_frame_then_answer_with_source_header(start_process, tiny_model, harness):
    from lifecycle_msgs.msg import Transition

    from vlm_ros.srv import Query

    node = start_node(start_process, tiny_model, "autostart:=false")
    harness.wait_for_service()
    resp = harness.query(instruction="what is on the table?")
    assert resp.status == Query.Response.NOT_READY and resp.message

    assert harness.change_state(Transition.TRANSITION_CONFIGURE)
    assert harness.query(instruction="hi").status == Query.Response.NOT_READY  # configured, not active
    assert harness.change_state(Transition.TRANSITION_ACTIVATE)
    resp = harness.query(instruction="what is on the table?")
    assert resp.status == Query.Response.NO_FRAME and "front" in resp.message

    harness.start_camera(image(), rate_hz=20)
    harness.wait_until_answering()
    resp = harness.query(instruction="what is on the table?", max_new_tokens=6)
    assert resp.status == Query.Response.OK, resp.message
    stamp_ns = resp.header.stamp.sec * 1_000_000_000 + resp.header.stamp.nanosec
    assert (stamp_ns, resp.header.frame_id) in harness.published  # the header of an image we really sent
    assert resp.camera == "front" and resp.timings.generated_tokens == 6 and resp.timings.total > 0
    node.wait_for_log("warm-up query: ")  # on the worker, after configure, before the first real query
    assert "warm-up query failed" not in node.log()

    assert harness.change_state(Transition.TRANSITION_DEACTIVATE)
    assert harness.query(instruction="hi").status == Query.Response.NOT_READY
    assert harness.change_state(Transition.TRANSITION_CLEANUP)
    assert "cleaned up: model unloaded" in node.log()


def test_invalid_arguments_are_refused_with_reasons(start_process, tiny_model, harness):
    from vlm_ros.srv import Query

    start_node(start_process, tiny_model, "max_instruction_bytes:=64")
    harness.wait_for_service()
    harness.start_camera(image(), rate_hz=20)
    harness.wait_until_answering()
    cases = {
        "unknown camera": dict(instruction="hi", camera="rear"),
        "oversized": dict(instruction="x" * 65),
        "bidi override": dict(instruction="where is the \u202emug"),
        "zero-width": dict(instruction="red\u200bmug"),
        "control char": dict(instruction="red\x07mug"),
        "negative timeout": dict(instruction="hi", timeout_s=-1.0),
        "huge timeout": dict(instruction="hi", timeout_s=1e9),
        "huge budget": dict(instruction="hi", max_new_tokens=100000),
    }
    for name, fields in cases.items():
        resp = harness.query(**fields)
        assert resp.status == Query.Response.INVALID_ARGUMENT, name
        assert resp.message, name
    assert harness.query(instruction="  where   is the mug? ", max_new_tokens=2).status == Query.Response.OK


def test_stale_frame_then_recovery(start_process, tiny_model, harness):
    from vlm_ros.srv import Query

    start_node(start_process, tiny_model, "max_frame_age_s:=0.5")
    harness.wait_for_service()
    harness.start_camera(image(), rate_hz=20)
    harness.wait_until_answering()
    assert harness.query(instruction="hi", max_new_tokens=2).status == Query.Response.OK
    harness.stop_camera()
    time.sleep(1.0)
    resp = harness.query(instruction="hi", max_new_tokens=2)
    assert resp.status == Query.Response.STALE_FRAME and "old" in resp.message
    harness.start_camera(image(), rate_hz=20)
    time.sleep(0.3)
    assert harness.query(instruction="hi", max_new_tokens=2).status == Query.Response.OK


def test_flood_gets_busy_or_served_never_a_hang(start_process, tiny_model, harness):
    from vlm_ros.srv import Query

    start_node(start_process, tiny_model, "queue_size:=1")
    harness.wait_for_service()
    harness.start_camera(image(), rate_hz=20)
    harness.wait_until_answering()
    futures = [harness.query_async(instruction="describe it", max_new_tokens=300, timeout_s=5.0) for _ in range(12)]
    deadline = time.monotonic() + 5.0 + 3.0  # every call returns within its timeout plus a margin
    while not all(f.done() for f in futures) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(f.done() for f in futures), "a call hung"
    statuses = [f.result().status for f in futures]
    assert set(statuses) <= {Query.Response.OK, Query.Response.BUSY, Query.Response.TIMEOUT}
    assert statuses.count(Query.Response.BUSY) >= 1 and statuses.count(Query.Response.OK) >= 1
    assert all(f.result().message for f in futures if f.result().status == Query.Response.BUSY)


def test_tiny_deadline_returns_timeout_with_partial_answer(start_process, tiny_model, harness):
    from vlm_ros.srv import Query

    start_node(start_process, tiny_model)
    harness.wait_for_service()
    harness.start_camera(image(), rate_hz=20)
    harness.wait_until_answering()
    t0 = time.monotonic()
    resp = harness.query(instruction="describe it", max_new_tokens=4000, timeout_s=0.3)
    assert time.monotonic() - t0 < 0.3 + 2.0
    assert resp.status == Query.Response.TIMEOUT and resp.message
    assert 0 < resp.timings.generated_tokens < 4000 and resp.answer  # the partial answer comes back


def test_image_callbacks_keep_their_rate_while_a_slow_query_runs(start_process, tiny_model, harness):
    """Inference runs on the worker thread: frames keep arriving at the camera rate during a long answer."""
    from diagnostic_msgs.msg import DiagnosticArray

    from vlm_ros.srv import Query

    # bfloat16 keeps the tiny model on the torch decode step (float32 takes the numpy step, which finishes 4000
    # tokens in well under a second): the query must stay busy for seconds
    start_node(start_process, tiny_model, "diagnostics_period_s:=0.25", "dtype:=bfloat16")
    harness.wait_for_service()
    received: list[tuple[float, int]] = []

    def on_diagnostics(msg):
        for status in msg.status:
            if status.name == "vlm: camera front":
                values = {kv.key: kv.value for kv in status.values}
                received.append((time.monotonic(), int(values["received"])))

    harness.node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    rate = 30.0
    harness.start_camera(image(h=480, w=640), rate_hz=rate)
    harness.wait_until_answering()
    time.sleep(0.5)
    # two long queries back to back: one took 1.3-2.0 s (torch 2.13 CPU and CUDA builds), too close to 2 s alone
    futures = [harness.query_async(instruction="describe it", max_new_tokens=4000, timeout_s=4.0) for _ in range(2)]
    started = time.monotonic()
    while not all(f.done() for f in futures) and time.monotonic() - started < 20:
        time.sleep(0.05)
    finished = time.monotonic()
    assert all(f.done() and f.result().status in (Query.Response.OK, Query.Response.TIMEOUT) for f in futures)
    assert finished - started > 2.0, "the queries were not slow enough to show anything"
    during = [(t, n) for t, n in received if started + 0.3 <= t <= finished - 0.1]
    assert len(during) >= 2
    (t0, n0), (t1, n1) = during[0], during[-1]
    measured = (n1 - n0) / (t1 - t0)
    sent = sum(t0 <= t <= t1 for t in harness.published_at) / (t1 - t0)  # what the camera really achieved
    print(f"image callbacks during {finished - started:.1f} s of queries: {measured:.1f} Hz "
          f"(camera sent {sent:.1f} Hz)")
    assert sent >= 0.5 * rate, "the test's own camera could not keep its rate"
    assert measured >= 0.8 * sent


def test_process_wide_remaps_rename_the_node_and_its_camera_node_follows(start_process, tiny_model, harness):
    """`ros2 launch` passes `__node`, `__ns` and topic remaps to the whole process. The node takes the new name and
    namespace; its camera companion node (`<name>_cameras`, CameraIngest) keeps a name of its own beside it and
    subscribes to the remapped topic, and a frame sent there answers a query on the renamed service."""
    from vlm_ros.srv import Query

    start_process(["-m", "vlm_ros.ros.node", "--ros-args", "-p", f"model:={tiny_model}", "-p", "device:=cpu",
                   "-r", "__node:=eye", "-r", "__ns:=/robot1", "-r", "camera/image_raw:=/sensors/rgb"],
                  "perception_node")
    client = harness.node.create_client(Query, "/robot1/eye/query")
    assert client.wait_for_service(timeout_sec=60), "/robot1/eye/query did not appear"
    deadline = time.monotonic() + 30
    while not harness.node.get_subscriptions_info_by_topic("/sensors/rgb") and time.monotonic() < deadline:
        time.sleep(0.1)
    subscribers = [(i.node_name, i.node_namespace)
                   for i in harness.node.get_subscriptions_info_by_topic("/sensors/rgb")]
    assert subscribers == [("eye_cameras", "/robot1")]
    assert {("eye", "/robot1"), ("eye_cameras", "/robot1")} <= set(harness.node.get_node_names_and_namespaces())

    response, sent = None, []
    while time.monotonic() < deadline + 30:
        sent.append(harness.publish_frame(image(), topic="/sensors/rgb"))
        response = harness.query(client=client, instruction="hi", max_new_tokens=2)
        if response.status == Query.Response.OK:
            break
        time.sleep(0.2)
    assert response.status == Query.Response.OK, response.message
    # one of the frames sent here (the query can overtake the newest one on its way to the node)
    assert (response.header.stamp.sec * 10**9 + response.header.stamp.nanosec, response.header.frame_id) in sent
