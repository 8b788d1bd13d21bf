"""Soak: two 640x480 cameras (colour + depth, 30 Hz), a query every 0.5 s and a Track goal on one camera all
along, against a real node process.

60 s in the normal suite (tiny random LLaVA on CPU); VLM_ROS_SOAK_S=600 runs the 10-minute variant, and
VLM_ROS_SOAK_MODEL='' (empty) runs it on the embedded default model. The same soak is the CLI
`python -m vlm_ros.tools.soak --seconds 600 --track`. It checks leaks, hangs and that every query is answered; queries
get a 30 s timeout and the node max_frame_age_s 10 s, so a 2-core machine busy with other work gives slow
answers (reported as latency) rather than TIMEOUT/STALE_FRAME.
"""

from __future__ import annotations

import math
import os

import pytest
from conftest import requires_ros

pytestmark = requires_ros


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from vlm_ros.testing.tiny import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


def test_soak_two_cameras_with_depth_queries_and_a_track(tiny_model, tmp_path, rclpy_context):
    from vlm_ros.tools.soak import CAMERAS, run_soak

    seconds = float(os.environ.get("VLM_ROS_SOAK_S", "60"))
    model = os.environ.get("VLM_ROS_SOAK_MODEL", str(tiny_model))
    report = run_soak(seconds, model, tmp_path / "node.log", track=True)
    print(report.summary())

    assert report.node_exit_code == 0, (tmp_path / "node.log").read_text()[-3000:]
    assert report.unanswered == 0, "a query hung"
    assert report.queries >= 0.9 * seconds / 0.5
    assert set(report.statuses) <= {"OK", "BUSY"}, report.statuses
    assert report.statuses.get("OK", 0) >= 0.5 * report.queries, report.statuses
    assert math.isfinite(report.rss_growth) and report.rss_growth < 0.05, report.rss_samples
    for camera in CAMERAS:  # both cameras really streamed into the node, colour and depth
        assert report.received_per_camera[camera] > 0.5 * seconds * 10, report.summary()
        assert report.depth_received_per_camera[camera] > 0.5 * seconds * 10, report.summary()
    # the track ran all along (re-groundings in turn with the queries), never published a non-finite number,
    # and ended as cancelled
    assert report.track_end == "CANCELED", report.summary()
    assert report.track_update_hz > 5 and report.track_nonfinite == 0, report.summary()
