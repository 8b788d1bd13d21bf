"""The Query action over DDS against a real node process, on the tiny random LLaVA: feedback, cancel, and the
goal's terminal state, which is what an action client (a planner) reads first: SUCCEEDED only for an OK answer,
ABORTED for every other status, CANCELED when the client cancelled; the result always has status and message.
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
    # bfloat16 keeps the tiny model on the torch decode step: a 4000-token goal outlives a cancel or a deadline
    args = ["-m", "vlm_ros.ros.node", "--ros-args", "-p", f"model:={model}", "-p", "device:=cpu",
            "-p", "dtype:=bfloat16", "-p", "max_new_tokens_limit:=4096"]
    for p in params:
        args += ["-p", p]
    return start_process(args, "perception_node")


@pytest.fixture
def harness(rclpy_context):
    from harness import Harness

    h = Harness("action_client")
    yield h
    h.close()


def image(seed=0, h=120, w=160):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


class Goals:
    """Sends Query goals; run() waits for the result, optionally cancelling after some feedback.

    Feedback is read from the action's feedback topic by a subscription of our own: rclpy's ActionClient forgets a
    goal's feedback callback once the result has arrived, and the result (a service) may overtake the last
    feedback (a topic), which would then be lost to the test although the node published it.
    """

    def __init__(self, harness):
        from rclpy.action import ActionClient

        from vlm_ros.action import Query as QueryAction

        self.node = harness.node
        self.client = ActionClient(harness.node, QueryAction, "/vlm/query")
        self._feedback: dict[bytes, list[tuple[int, str]]] = {}
        harness.node.create_subscription(QueryAction.Impl.FeedbackMessage, "/vlm/query/_action/feedback",
                                         self._on_feedback, 100)
        assert self.client.wait_for_server(timeout_sec=60)
        t0 = time.monotonic()
        while harness.node.count_publishers("/vlm/query/_action/feedback") < 1:
            assert time.monotonic() - t0 < 10, "the node's feedback publisher was not discovered"
            time.sleep(0.05)

    def _on_feedback(self, msg) -> None:
        self._feedback.setdefault(bytes(msg.goal_id.uuid), []).append(
            (msg.feedback.generated_tokens, msg.feedback.partial_answer))

    def run(self, cancel_after: int | None = None, **fields):
        """(GoalStatus code, result, feedback [(generated_tokens, partial_answer)] as received) of one goal."""
        from vlm_ros.action import Query as QueryAction

        handle_box = {}
        seen = [0]

        def cancel_when_due():
            # feedback can arrive before the goal's handle does: cancel on whichever comes second
            if cancel_after is not None and seen[0] >= cancel_after and "handle" in handle_box \
                    and not handle_box.get("cancel_sent"):
                handle_box["cancel_sent"] = True
                handle_box["handle"].cancel_goal_async()

        def on_feedback(_msg):
            seen[0] += 1
            cancel_when_due()

        send = self.client.send_goal_async(QueryAction.Goal(**fields), feedback_callback=on_feedback)
        t0 = time.monotonic()
        while not send.done():
            assert time.monotonic() - t0 < 10
            time.sleep(0.01)
        handle_box["handle"] = send.result()
        assert handle_box["handle"].accepted
        cancel_when_due()
        result = handle_box["handle"].get_result_async()
        while not result.done():
            assert time.monotonic() - t0 < 30
            time.sleep(0.01)
        feedback = self._feedback.setdefault(bytes(handle_box["handle"].goal_id.uuid), [])
        # the last feedback was published before the result, but travels on another stream
        tokens = result.result().result.timings.generated_tokens
        deadline = time.monotonic() + 10.0
        while tokens and not (feedback and feedback[-1][0] >= tokens) and time.monotonic() < deadline:
            time.sleep(0.01)
        return result.result().status, result.result().result, list(feedback)


def test_action_streams_feedback_and_honours_cancel(start_process, tiny_model, harness):
    from action_msgs.msg import GoalStatus

    start_node(start_process, tiny_model)
    harness.wait_for_service()
    harness.start_camera(image(), rate_hz=20)
    harness.wait_until_answering()
    goals = Goals(harness)

    status, result, feedback = goals.run(instruction="describe it", max_new_tokens=12)
    assert status == GoalStatus.STATUS_SUCCEEDED and result.status == 0
    assert result.timings.generated_tokens == 12
    assert [n for n, _ in feedback] == list(range(1, 13)), feedback  # one per token, in order, none lost
    assert feedback[-1][1] == result.answer

    status, result, feedback = goals.run(instruction="describe it", max_new_tokens=4000, timeout_s=20.0,
                                         cancel_after=3)
    assert status == GoalStatus.STATUS_CANCELED
    assert 3 <= result.timings.generated_tokens < 4000 and "cancelled" in result.message


def test_goals_end_succeeded_only_for_ok_aborted_for_other_statuses_canceled_when_cancelled(start_process,
                                                                                          tiny_model, harness):
    """Also: NOT_READY names the lifecycle state the node is in."""
    from action_msgs.msg import GoalStatus
    from lifecycle_msgs.msg import Transition

    from vlm_ros.action import Query as QueryAction

    start_node(start_process, tiny_model, "autostart:=false")
    goals = Goals(harness)
    seen = {}

    def expect(name: str, goal_status: int, result_status: int, text: str, **fields):
        status, result, _ = goals.run(**fields)
        seen[name] = (status, result.status, result.message)
        assert (status, result.status) == (goal_status, result_status), seen[name]
        assert text in result.message, seen[name]
        return result

    aborted = GoalStatus.STATUS_ABORTED
    expect("unconfigured", aborted, QueryAction.Result.NOT_READY, "node is unconfigured", instruction="hi")
    assert harness.change_state(Transition.TRANSITION_CONFIGURE)
    expect("inactive", aborted, QueryAction.Result.NOT_READY, "node is inactive", instruction="hi")
    assert harness.change_state(Transition.TRANSITION_ACTIVATE)
    expect("no frame", aborted, QueryAction.Result.NO_FRAME, "no frame received yet", instruction="hi")
    expect("invalid", aborted, QueryAction.Result.INVALID_ARGUMENT, "U+202E", instruction="red\u202emug")

    harness.start_camera(image(), rate_hz=20)
    harness.wait_until_answering()
    ok = expect("ok", GoalStatus.STATUS_SUCCEEDED, QueryAction.Result.OK, "", instruction="hi", max_new_tokens=3)
    assert ok.timings.generated_tokens == 3 and ok.header.frame_id == "front_optical_frame"
    timeout = expect("timeout", aborted, QueryAction.Result.TIMEOUT, "deadline reached", instruction="describe it",
                     max_new_tokens=4000, timeout_s=0.5)
    assert 0 < timeout.timings.generated_tokens < 4000 and timeout.answer  # the partial answer comes back
    status, result, _ = goals.run(instruction="describe it", max_new_tokens=4000, timeout_s=20.0, cancel_after=2)
    seen["cancel"] = (status, result.status, result.message)
    assert status == GoalStatus.STATUS_CANCELED and "cancelled" in result.message, seen["cancel"]
    print(f"goal terminal states: {seen}")
