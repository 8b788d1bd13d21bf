"""Newest-frame buffers and query validation: the ROS-free halves of the node's callbacks and services."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from vlm_ros.core.frames import CameraBuffer
from vlm_ros.core.requests import QueryArgs, QuerySettings, build_request, check_limits, normalise_instruction
from vlm_ros.core.types import CameraIntrinsics, Request, Status, Task

S = 1_000_000_000


def rgb(value: int = 0, h: int = 4, w: int = 6) -> np.ndarray:
    return np.full((h, w, 3), value, np.uint8)


def test_snapshot_reports_no_frame_then_the_newest_frame_only():
    buf = CameraBuffer("front")
    frame, status, message = buf.snapshot(now_ns=10 * S, max_age_ns=S)
    assert frame is None and status == Status.NO_FRAME and "front" in message
    for i in range(5):
        buf.put_image(rgb(i), stamp_ns=(9 * S) + i, frame_id="cam")
    frame, status, _ = buf.snapshot(now_ns=9 * S + 10, max_age_ns=S)
    assert status == Status.OK and frame.stamp_ns == 9 * S + 4 and frame.image[0, 0, 0] == 4  # no backlog
    assert frame.frame_id == "cam" and frame.camera == "front" and buf.stats.received == 5


def test_wait_for_image_wakes_on_a_new_frame_and_times_out_without_one():
    buf = CameraBuffer("front")
    t0 = time.monotonic()
    assert buf.wait_for_image(None, 0.05) is None and time.monotonic() - t0 >= 0.05  # no frame yet
    buf.put_image(rgb(), stamp_ns=S, frame_id="cam")
    assert buf.wait_for_image(None, 5.0) == S  # a frame newer than none: at once
    threading.Timer(0.1, buf.put_image, (rgb(), 2 * S, "cam")).start()
    t0 = time.monotonic()
    assert buf.wait_for_image(S, 5.0) == 2 * S and time.monotonic() - t0 < 2.0  # woken by the frame, not the timeout
    assert buf.wait_for_image(2 * S, 0.05) == 2 * S  # none newer: the same stamp after the timeout


def test_stale_frame_is_refused_with_its_age():
    buf = CameraBuffer("front")
    buf.put_image(rgb(), stamp_ns=5 * S, frame_id="cam")
    frame, status, message = buf.snapshot(now_ns=8 * S, max_age_ns=2 * S)
    assert frame is None and status == Status.STALE_FRAME and "3.00 s old" in message


def test_depth_pairs_with_the_closest_stamp_within_tolerance_only():
    buf = CameraBuffer("front", depth_tolerance_ns=50_000_000)
    for t in (1.00, 1.10, 1.20):
        buf.put_depth(np.full((2, 3), t, np.float32), int(t * S), "depth")
    buf.put_image(rgb(), int(1.12 * S), "cam")
    frame, _, _ = buf.snapshot(int(1.2 * S), S)
    assert frame.depth[0, 0] == pytest.approx(1.10)  # 20 ms away: paired
    buf.put_image(rgb(), int(1.40 * S), "cam")
    frame, _, _ = buf.snapshot(int(1.4 * S), S)
    assert frame.depth is None  # nearest depth is 200 ms away: not paired


def test_a_query_between_a_colour_frame_and_its_depth_waits_briefly_for_that_depth():
    import threading

    buf = CameraBuffer("front", depth_tolerance_ns=50_000_000)
    buf.put_depth(np.full((2, 3), 1.0, np.float32), int(1.000 * S), "depth")
    buf.put_image(rgb(1), int(1.000 * S), "cam")
    buf.put_image(rgb(2), int(1.067 * S), "cam")  # its depth is still on the way
    late = threading.Timer(0.05, lambda: buf.put_depth(np.full((2, 3), 2.0, np.float32), int(1.067 * S), "depth"))
    late.start()
    t0 = time.monotonic()
    frame, status, _ = buf.snapshot(int(1.07 * S), S, companion_wait_s=1.0)
    assert status == Status.OK and frame.stamp_ns == int(1.067 * S) and frame.depth[0, 0] == 2.0
    assert time.monotonic() - t0 < 0.5  # woken by the depth, not by the end of the wait
    buf.put_image(rgb(3), int(1.133 * S), "cam")  # no depth comes for this one
    t0 = time.monotonic()
    frame, _, _ = buf.snapshot(int(1.14 * S), S, companion_wait_s=0.1)
    assert frame.depth is None and 0.09 <= time.monotonic() - t0 < 0.5
    frame, _, _ = CameraBuffer("no depth").snapshot(0, S, companion_wait_s=1.0)  # no depth stream: no wait


def test_the_first_frame_waits_for_its_depth_when_a_depth_publisher_is_known():
    """No depth has arrived yet (nothing says depth is streaming), but the node sees a depth publisher."""
    import threading

    buf = CameraBuffer("front")
    buf.put_image(rgb(1), S, "cam")
    threading.Timer(0.05, lambda: buf.put_depth(np.full((2, 3), 2.0, np.float32), S, "depth")).start()
    frame, _, _ = buf.snapshot(S, S, companion_wait_s=1.0, depth_expected=True)
    assert frame.depth is not None and frame.depth[0, 0] == 2.0


def test_each_frame_takes_the_camera_info_with_its_own_stamp_and_waits_briefly_for_it():
    """CameraInfo comes on its own topic: a frame can arrive before its CameraInfo, after the previous one's.
    The node once paired a frame with the previous scene's intrinsics (focal length 5% off: a 3-D point
    5.1 cm from the truth instead of 1.6)."""
    import threading

    buf = CameraBuffer("front")
    t0 = time.monotonic()
    for i, f in enumerate((500.0, 520.0)):
        buf.put_intrinsics(CameraIntrinsics(f, f, 1.0, 1.0), stamp_ns=(i + 1) * S)
    buf.put_image(rgb(1), S, "cam")
    assert buf.snapshot(S, S, companion_wait_s=1.0)[0].intrinsics.fx == 500.0  # its own, not the newest
    buf.put_image(rgb(2), 3 * S, "cam")  # its CameraInfo is on the way
    threading.Timer(0.05, lambda: buf.put_intrinsics(CameraIntrinsics(540.0, 540.0, 1.0, 1.0), stamp_ns=3 * S)).start()
    assert buf.snapshot(3 * S, S, companion_wait_s=1.0)[0].intrinsics.fx == 540.0
    assert time.monotonic() - t0 < 0.5  # woken by the CameraInfo, not by the end of the wait
    buf.put_image(rgb(3), 4 * S, "cam")  # none comes for this one: after the wait, the newest
    assert buf.snapshot(4 * S, S, companion_wait_s=0.1)[0].intrinsics.fx == 540.0


def test_a_frame_without_its_own_camera_info_never_takes_one_for_another_resolution():
    buf = CameraBuffer("front")
    buf.put_intrinsics(CameraIntrinsics(500.0, 500.0, 319.5, 239.5), size=(640, 480), stamp_ns=S)
    buf.put_intrinsics(CameraIntrinsics(250.0, 250.0, 159.5, 119.5), size=(320, 240), stamp_ns=2 * S)
    buf.put_image(rgb(h=480, w=640), 3 * S, "cam")  # its own CameraInfo never comes
    assert buf.snapshot(3 * S, S, companion_wait_s=0.05)[0].intrinsics.fx == 500.0
    buf.put_image(rgb(h=120, w=160), 4 * S, "cam")  # a resolution no CameraInfo was for: no intrinsics, no 3-D
    assert buf.snapshot(4 * S, S, companion_wait_s=0.05)[0].intrinsics is None


def test_camera_info_stamped_apart_from_the_frames_is_used_without_waiting():
    unsynchronised = CameraBuffer("front")
    unsynchronised.put_intrinsics(CameraIntrinsics(500.0, 500.0, 1.0, 1.0), stamp_ns=S // 3)
    unsynchronised.put_image(rgb(1), S, "cam")
    t0 = time.monotonic()
    frame, _, _ = unsynchronised.snapshot(S, S, companion_wait_s=1.0, intrinsics_expected=True)
    assert frame.intrinsics.fx == 500.0 and time.monotonic() - t0 < 0.5
    no_info = CameraBuffer("no camera_info")  # and no publisher known: no wait either
    no_info.put_image(rgb(1), S, "cam")
    t0 = time.monotonic()
    assert no_info.snapshot(S, S, companion_wait_s=1.0)[0].intrinsics is None and time.monotonic() - t0 < 0.5


def test_a_frame_delivered_late_is_dropped_without_a_reset():
    buf = CameraBuffer("front")
    buf.put_depth(np.ones((2, 3), np.float32), int(1.10 * S), "depth")
    buf.put_image(rgb(1), int(1.00 * S), "cam")
    buf.put_image(rgb(2), int(1.10 * S), "cam")
    buf.put_image(rgb(3), int(1.05 * S), "cam")  # two callbacks overlapped: the older frame lands last
    buf.put_depth(np.ones((2, 3), np.float32), int(1.05 * S), "depth")  # a late depth image is kept
    frame, _, _ = buf.snapshot(int(1.1 * S), S)
    assert frame.stamp_ns == int(1.10 * S) and frame.depth is not None
    assert buf.stats.resets == 0 and buf.stats.dropped["out of order"] == 1 and buf.stats.depth_received == 2


def test_time_going_backwards_resets_the_buffer():
    buf = CameraBuffer("front")
    buf.put_depth(np.ones((2, 3), np.float32), 10 * S, "depth")
    buf.put_image(rgb(1), 10 * S, "cam")
    buf.put_image(rgb(2), 2 * S, "cam")  # a replay looped: the clock jumped back
    frame, status, _ = buf.snapshot(2 * S, S)
    assert status == Status.OK and frame.stamp_ns == 2 * S and frame.depth is None  # the "future" depth is gone
    assert buf.stats.resets == 1


def test_intrinsics_come_from_colour_info_else_from_depth_info_rescaled():
    buf = CameraBuffer("front")
    buf.put_image(rgb(h=480, w=640), S, "cam")
    buf.put_intrinsics(CameraIntrinsics(300.0, 300.0, 159.5, 119.5), depth=True, size=(320, 240))
    frame, _, _ = buf.snapshot(S, S)
    k = frame.intrinsics
    assert (k.fx, k.fy) == (600.0, 600.0) and (k.cx, k.cy) == pytest.approx((319.5, 239.5))
    buf.put_intrinsics(CameraIntrinsics(500.0, 501.0, 320.0, 240.0))
    assert buf.snapshot(S, S)[0].intrinsics == CameraIntrinsics(500.0, 501.0, 320.0, 240.0)


def test_drops_are_counted_by_reason():
    buf = CameraBuffer("front")
    buf.drop("invalid image")
    buf.drop("invalid image")
    buf.drop("invalid depth")
    assert buf.stats.dropped == {"invalid image": 2, "invalid depth": 1}


@pytest.mark.parametrize("text,normalised", [
    ("  where   is the\tred mug? ", "where is the red mug?"),
    ("", ""),
    ("cafe\u0301", "caf\u00e9"),  # NFC
    ("où est la tasse rouge ?", "où est la tasse rouge ?"),
])
def test_instructions_are_normalised(text, normalised):
    assert normalise_instruction(text, 1024) == (normalised, "")


@pytest.mark.parametrize("text,reason", [
    ("x" * 1025, "1025 bytes"),
    ("é" * 600, "1200 bytes"),
    ("red\u202emug", "U+202E"),  # bidi override
    ("red\u200bmug", "U+200B"),  # zero-width space
    ("red\ufeffmug", "U+FEFF"),
    ("red\x00mug", "U+0000"),
    ("red\x1b[31mmug", "U+001B"),  # terminal escape
    ("\ud800", "U+D800"),  # lone surrogate
])
def test_oversized_and_invisible_instructions_are_refused(text, reason):
    normalised, error = normalise_instruction(text, 1024)
    assert normalised == "" and reason in error


@pytest.mark.parametrize("timeout,tokens,ok", [
    (0.0, 0, True), (5.0, 100, True), (120.0, 512, True),
    (-1.0, 0, False), (121.0, 0, False), (float("nan"), 0, False), (float("inf"), 0, False),
    (1.0, -1, False), (1.0, 513, False),
])
def test_query_limits(timeout, tokens, ok):
    assert (check_limits(timeout, tokens, max_timeout_s=120.0, max_tokens=512) == "") is ok


@pytest.mark.parametrize("args,expected", [
    (QueryArgs(""), Request(Task.DESCRIBE, "", 64, 10.0)),
    (QueryArgs(" \t\n", ground=True), Request(Task.DESCRIBE, "", 64, 10.0)),
    (QueryArgs("  where is\tit? "), Request(Task.ANSWER, "where is it?", 64, 10.0)),
    (QueryArgs("the mug", ground=True, timeout_s=2.5, max_new_tokens=7), Request(Task.GROUND, "the mug", 7, 2.5)),
])
def test_query_args_become_requests_with_the_task_and_the_defaults(args, expected):
    assert build_request(args, QuerySettings()) == (expected, "")


@pytest.mark.parametrize("args,reason", [
    (QueryArgs("red\u200bmug"), "U+200B"),
    (QueryArgs("hi", timeout_s=121.0), "timeout_s"),
    (QueryArgs("hi", max_new_tokens=513), "max_new_tokens"),
])
def test_query_args_out_of_bounds_are_refused_with_the_reason(args, reason):
    request, error = build_request(args, QuerySettings())
    assert request is None and reason in error
