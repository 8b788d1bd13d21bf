"""Bad camera input over DDS: every malformed message is dropped and counted; the node keeps answering."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from conftest import requires_ros

pytestmark = requires_ros


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from vlm_ros.testing.tiny import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


def test_malformed_images_are_dropped_counted_and_queries_keep_working(start_process, tiny_model, rclpy_context):
    from diagnostic_msgs.msg import DiagnosticArray
    from harness import Harness
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image

    from vlm_ros.ros.convert import make_header

    node = start_process(["-m", "vlm_ros.ros.node", "--ros-args", "-p", f"model:={tiny_model}", "-p", "device:=cpu",
                          "-p", "cameras.front.compressed_topic:=camera/image_raw/compressed",
                          "-p", "diagnostics_period_s:=0.2"], "node")
    harness = Harness("bad_input_client")
    try:
        harness.wait_for_service()
        good = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
        harness.start_camera(good, rate_hz=10)
        harness.wait_until_answering()
        harness.stop_camera()

        diagnostics = {}

        def on_diagnostics(msg):
            for status in msg.status:
                diagnostics[status.name] = {kv.key: kv.value for kv in status.values}

        harness.node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
        header = make_header(harness.node.get_clock().now().nanoseconds, "cam")
        raw = harness.publisher(Image, "/camera/image_raw")
        bad_images = [
            Image(header=header, height=4, width=4, encoding="rgb8", step=12, data=bytes(47)),  # short data
            Image(header=header, height=4, width=4, encoding="rgb8", step=8, data=bytes(32)),  # step < width*3
            Image(header=header, height=0, width=4, encoding="rgb8", step=12, data=b""),  # zero height
            Image(header=header, height=100000, width=100000, encoding="rgb8", step=300000, data=bytes(12)),  # huge
            Image(header=header, height=4, width=4, encoding="xyz99", step=12, data=bytes(48)),  # unknown encoding
            Image(header=header, height=4, width=4, encoding="16UC1", step=8, data=bytes(32)),  # depth as colour
        ]
        compressed = harness.publisher(CompressedImage, "/camera/image_raw/compressed")
        bad_compressed = [
            CompressedImage(header=header, format="jpeg", data=b""),
            CompressedImage(header=header, format="jpeg", data=b"\xff\xd8\xff garbage"),
            CompressedImage(header=header, format="png", data=b"\x89PNG\r\n\x1a\n" + bytes(20)),
            CompressedImage(header=header, format="bmp", data=b"BM" + bytes(60)),
        ]
        depth = harness.publisher(Image, "/camera/depth/image_raw")
        bad_depth = [Image(header=header, height=2, width=2, encoding="rgb8", step=6, data=bytes(12))]
        info = harness.publisher(CameraInfo, "/camera/camera_info")
        bad_info = CameraInfo(header=header, width=64, height=48)
        bad_info.k = [0.0, 0, 32.0, 0, math.nan, 24.0, 0, 0, 1.0]
        for _ in range(3):  # sensor QoS is best effort: send each a few times
            for m in bad_images:
                raw.publish(m)
            for m in bad_compressed:
                compressed.publish(m)
            for m in bad_depth:
                depth.publish(m)
            info.publish(bad_info)
            time.sleep(0.1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            camera = diagnostics.get("vlm: camera front", {})
            if int(camera.get("dropped: invalid image", 0)) >= len(bad_images) and \
                    int(camera.get("dropped: invalid compressed image", 0)) >= len(bad_compressed) and \
                    "dropped: invalid depth" in camera and "dropped: invalid camera_info" in camera:
                break
            time.sleep(0.1)
        camera = diagnostics["vlm: camera front"]
        assert int(camera["dropped: invalid image"]) >= len(bad_images), camera
        assert int(camera["dropped: invalid compressed image"]) >= len(bad_compressed), camera
        assert int(camera["dropped: invalid depth"]) >= 1 and int(camera["dropped: invalid camera_info"]) >= 1
        assert node.proc.poll() is None, node.log()
        assert "camera 'front': dropped invalid" in node.log()  # a (throttled) warning says why

        stamp, _ = harness.publish_frame(good)
        deadline = time.monotonic() + 10
        while True:
            resp = harness.query(instruction="what is this?", max_new_tokens=3)
            if resp.status == 0 and resp.header.stamp.sec * 10**9 + resp.header.stamp.nanosec == stamp:
                break
            assert time.monotonic() < deadline, (
                f"no answer on a good frame after bad input: {resp.status} {resp.message}")
            harness.publish_frame(good, stamp_ns=stamp)
            time.sleep(0.2)
        for target in resp.targets:
            assert all(math.isfinite(v) for v in (target.x_min, target.y_min, target.x_max, target.y_max))
    finally:
        harness.close()
