"""The Track action over DDS with the embedded default model: a rendered moving scene in (colour, 16UC1 depth,
CameraInfo), tracks with stable IDs, states and 3-D points out as feedback and on ~/tracks; the camera stopping,
goals beyond max_tracks, invalid goals and cancel.

The node runs in a subprocess on the shipped weights. The frames are the first seconds of
vlm_ros.embedded.motion's default script (a red cube sliding, a blue ball, a green star moving right), published at
15 Hz with fresh stamps; the script's per-frame truth says where each object is.
"""

from __future__ import annotations

import threading
import time

import pytest
from conftest import requires_ros

from vlm_ros.models.registry import default_model_dir

pytestmark = [requires_ros, pytest.mark.slow,
              pytest.mark.skipif(not (default_model_dir() / "config.json").is_file(),
                                 reason="no shipped embedded weights (train: python -m vlm_ros.embedded.train)")]

RATE_HZ = 15.0
SECONDS = 2.0


@pytest.fixture(scope="module")
def frames():
    from vlm_ros.embedded.motion import MotionRenderer, default_script

    renderer = MotionRenderer(default_script())
    return [renderer.render(i / RATE_HZ, i) for i in range(int(SECONDS * RATE_HZ))]


@pytest.fixture(scope="module")
def node_and_harness(rclpy_context, tmp_path_factory):
    from conftest import NodeProcess
    from harness import Harness
    from sensor_msgs.msg import CameraInfo, Image

    log = tmp_path_factory.mktemp("node") / "node.log"
    node = NodeProcess(["-m", "vlm_ros.ros.node", "--ros-args", "-p", "device:=cpu", "-p", "max_frame_age_s:=30.0",
                        "-p", "max_tracks:=1", "-p", "track_camera_timeout_s:=0.5"], log)
    harness = Harness("track_test_client")
    harness.wait_for_service(60)
    harness.wait_for_subscribers({"/camera/camera_info": CameraInfo, "/camera/depth/image_raw": Image,
                                  "/camera/image_raw": Image})
    yield node, harness
    harness.close()
    node.stop()


class Camera:
    """Publishes the rendered frames at RATE_HZ in a thread; `truth[stamp_ns]` is each published frame's truth."""

    def __init__(self, harness, frames, truth: dict):
        self.harness, self.frames, self.truth = harness, frames, truth
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        for f in self.frames:
            t0 = time.monotonic()
            k = f.intrinsics
            stamp_ns, _ = self.harness.publish_frame(f.image, depth_m=f.depth, k=(k.fx, k.fy, k.cx, k.cy))
            self.truth[stamp_ns] = f.objects
            time.sleep(max(0.0, 1.0 / RATE_HZ - (time.monotonic() - t0)))

    def join(self):
        self._thread.join(timeout=60)


class TrackGoal:
    """One Track goal: its feedback as it comes, cancel, and its end."""

    def __init__(self, harness, **fields):
        from rclpy.action import ActionClient

        from vlm_ros.action import Track

        self.client = ActionClient(harness.node, Track, "/vlm/track")
        assert self.client.wait_for_server(timeout_sec=60)
        self.feedback = []
        send = self.client.send_goal_async(Track.Goal(**fields), feedback_callback=lambda m: self.feedback.append(
            m.feedback))
        _wait(send.done, 10, "goal response")
        self.handle = send.result()
        assert self.handle.accepted
        self.result = self.handle.get_result_async()

    def end(self, timeout: float = 10.0):
        """(GoalStatus code, result) once it ended."""
        _wait(self.result.done, timeout, "goal result")
        return self.result.result().status, self.result.result().result

    def cancel(self):
        self.handle.cancel_goal_async()
        return self.end()


def _wait(done, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.01)


def stamp_ns(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def test_tracks_keep_their_ids_then_the_camera_stops_busy_and_invalid_goals_and_cancel(node_and_harness, frames):
    import math

    from action_msgs.msg import GoalStatus

    from vlm_ros.core.types import Box
    from vlm_ros.msg import TrackedTarget, TrackedTargetArray

    _, harness = node_and_harness
    on_topic = []
    harness.node.create_subscription(TrackedTargetArray, "/vlm/tracks", on_topic.append, 50)
    # the node must have a frame before a goal (else its first grounding waits for one): one still frame first
    first = frames[0]
    k = first.intrinsics
    still, _ = harness.publish_frame(first.image, depth_m=first.depth, k=(k.fx, k.fy, k.cx, k.cy))
    harness.wait_until_answering()

    goal = TrackGoal(harness, instruction="detect all objects")
    camera = Camera(harness, frames, {still: first.objects})
    # a second goal beyond max_tracks (1) and an invalid one are answered at once, with the reason
    busy = TrackGoal(harness, instruction="detect all objects")
    status, result = busy.end()
    assert (status, result.status) == (GoalStatus.STATUS_ABORTED, result.BUSY) and "max_tracks" in result.message
    camera.join()
    time.sleep(1.5)  # the camera has stopped: after track_camera_timeout_s the tracks are lost
    status, result = goal.cancel()
    assert status == GoalStatus.STATUS_CANCELED and result.status == result.OK, result.message
    bad = TrackGoal(harness, instruction="detect all objects", update_rate_hz=-1.0)
    status, result = bad.end()
    assert (status, result.status) == (GoalStatus.STATUS_ABORTED, result.INVALID_ARGUMENT)
    assert "update_rate_hz" in result.message

    feedback = goal.feedback
    assert feedback, "no feedback"
    # every feedback describes a published frame, in order, and nothing in it is non-finite
    stamps = [stamp_ns(f.header) for f in feedback]
    assert set(stamps) <= set(camera.truth) and stamps == sorted(stamps)
    for f in feedback:
        for t in f.tracks:
            g = t.target
            assert all(math.isfinite(v) for v in (g.x_min, g.y_min, g.x_max, g.y_max, g.position.x, g.position.y,
                                                  g.position.z, t.age_s, t.confidence))
            assert 0 <= g.x_min <= g.x_max <= 640 and 0 <= g.y_min <= g.y_max <= 480
    # the red cube, the blue ball and the star are followed with one ID each: every track that overlaps an object's
    # true box (IoU >= 0.5) while tracking is the same track for that object, and has a 3-D point near its truth
    ids: dict[int, set[int]] = {}
    errors = []
    for f in feedback:
        for obj in camera.truth[stamp_ns(f.header)]:
            if obj.box is None or obj.visible_fraction < 0.5:
                continue
            for t in f.tracks:
                box = Box(t.target.x_min, t.target.y_min, t.target.x_max, t.target.y_max)
                if t.state == TrackedTarget.STATE_TRACKING and box.iou(obj.box) >= 0.5:
                    ids.setdefault(obj.object_id, set()).add(t.id)
                    if t.target.position_valid:
                        p = t.target.position
                        errors.append(math.dist((p.x, p.y, p.z), obj.surface_centroid))
    assert {1, 2} <= set(ids), ids  # the red cube and the blue ball at least
    assert all(len(v) == 1 for v in ids.values()), ids
    assert errors and sorted(errors)[len(errors) // 2] < 0.02
    # after the camera stopped, the last feedback (one, on the stop) has every track lost; those still followed
    # until then say the camera stopped (one lost before, e.g. when it left the image, keeps its own reason, and
    # a grounding merged after the last frame may have lost one as unconfirmed)
    last, before = feedback[-1], {t.id: t.state for t in feedback[-2].tracks}
    assert last.tracks and all(t.state == TrackedTarget.STATE_LOST for t in last.tracks)
    stopped = [t.reason for t in last.tracks if before.get(t.id) != TrackedTarget.STATE_LOST]
    assert any(r.startswith("camera stopped") for r in stopped), stopped
    assert all(r.startswith(("camera stopped", "not confirmed by")) for r in stopped), stopped
    # ~/tracks carries the same updates
    assert on_topic and {stamp_ns(m.header) for m in on_topic} <= set(camera.truth)
    assert on_topic[-1].instruction == "detect all objects"
    # cancel ended it: no feedback after the result
    n = len(goal.feedback)
    time.sleep(0.5)
    assert len(goal.feedback) == n


def test_a_running_track_ends_not_ready_when_the_node_deactivates_and_goals_then_get_not_ready(node_and_harness,
                                                                                              frames):
    """Runs last in this module: it leaves the node inactive."""
    from action_msgs.msg import GoalStatus
    from lifecycle_msgs.msg import Transition

    _, harness = node_and_harness
    goal = TrackGoal(harness, instruction="detect all objects")
    camera = Camera(harness, frames[:10], {})
    camera.join()
    assert harness.change_state(Transition.TRANSITION_DEACTIVATE)
    status, result = goal.end()
    assert (status, result.status) == (GoalStatus.STATUS_ABORTED, result.NOT_READY)
    assert "stopped serving" in result.message, result.message
    status, result = TrackGoal(harness, instruction="detect all objects").end()
    assert (status, result.status) == (GoalStatus.STATUS_ABORTED, result.NOT_READY) and "inactive" in result.message
