"""Tier 2 with the embedded default model: rendered scenes in over DDS (Image, JPEG and PNG CompressedImage,
16UC1 depth, CameraInfo), grounded 3-D targets out.

The node runs in a subprocess on the shipped weights (vlm_ros/embedded/weights). Scenes come from the
project's renderer, whose ground truth gives the box, the visible pixels and the visible surface's 3-D centroid
of every object.
"""

from __future__ import annotations

import time

import pytest
from conftest import requires_ros

from vlm_ros.models.registry import default_model_dir

pytestmark = [
    requires_ros,
    pytest.mark.skipif(not (default_model_dir() / "config.json").is_file(),
                       reason="no shipped embedded weights (train: python -m vlm_ros.embedded.train)"),
]

# Fixed held-out-style scenes with two objects each. The shipped weights ground 0.93 of the objects of 300
# held-out scenes (TRAINING.md) and these three with box IoU 0.80-0.93. A retrained model that misses one fails
# here, which is the point: the node must hand planners a box, a mask and a 3-D point that match the scene.
SEEDS = (101, 202, 303)


@pytest.fixture(scope="module")
def node_and_client(rclpy_context, tmp_path_factory):
    from conftest import NodeProcess
    from harness import Harness

    log = tmp_path_factory.mktemp("node") / "node.log"
    node = NodeProcess(["-m", "vlm_ros.ros.node", "--ros-args", "-p", "device:=cpu", "-p", "max_frame_age_s:=30.0",
                        "-p", "cameras.front.compressed_topic:=camera/image_raw/compressed"], log)
    harness = Harness("embedded_test_client")
    harness.wait_for_service(60)
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image

    harness.wait_for_subscribers({"/camera/camera_info": CameraInfo, "/camera/depth/image_raw": Image,
                                  "/camera/image_raw": Image, "/camera/image_raw/compressed": CompressedImage})
    yield node, harness
    harness.close()
    node.stop()


def ask_about(harness, scene, obj, instruction: str, ground: bool, compressed: str | None = None):
    k = scene.intrinsics
    frame = dict(depth_m=scene.depth, k=(k.fx, k.fy, k.cx, k.cy), compressed=compressed)
    stamp_ns, frame_id = harness.publish_frame(scene.image, **frame)
    deadline = time.monotonic() + 30
    while True:  # until the node has this very frame (the response header says which one it used) and, when
        # grounding, its depth: depth and colour arrive on separate topics, the depth image can come in later
        resp = harness.query(instruction=instruction, ground=ground, timeout_s=20.0)
        stamp = resp.header.stamp.sec * 1_000_000_000 + resp.header.stamp.nanosec
        has_depth = not ground or any(t.position_valid for t in resp.targets)
        if resp.status == 0 and stamp == stamp_ns and has_depth or time.monotonic() > deadline:
            return resp, stamp_ns, frame_id
        harness.publish_frame(scene.image, stamp_ns=stamp_ns, **frame)
        time.sleep(0.2)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("transport", ["raw", "jpeg", "png"])
def test_grounded_target_box_and_3d_point_match_the_rendered_truth(node_and_client, seed, transport):
    from vlm_ros.core.types import Box
    from vlm_ros.embedded.scenes import render_scene

    _, harness = node_and_client
    scene = render_scene(seed, n_objects=2)
    obj = scene.objects[0]
    resp, stamp_ns, frame_id = ask_about(harness, scene, obj, f"where is the {obj.color} {obj.shape}?", True,
                                         compressed=None if transport == "raw" else transport)
    assert resp.status == 0, resp.message
    assert resp.header.stamp.sec * 1_000_000_000 + resp.header.stamp.nanosec == stamp_ns
    assert resp.header.frame_id == frame_id
    assert obj.shape in resp.answer and obj.color in resp.answer, resp.answer
    (target,) = [t for t in resp.targets if obj.shape in t.label]
    box = Box(target.x_min, target.y_min, target.x_max, target.y_max)
    assert box.iou(obj.box) >= 0.5, (box, obj.box)
    assert target.position_valid, "no 3-D point: depth or CameraInfo not paired with the frame"
    from vlm_ros.ros.convert import target_from_msg
    from vlm_ros.tools.geometry_metrics import GeometryTruth, score_target

    index = scene.objects.index(obj)
    score = score_target(target_from_msg(target), GeometryTruth.of(obj, scene.object_mask(index)), 640, 480)
    assert target.geometry_method == "depth_layer" and score.mask_iou >= 0.85, score
    # Depth is exact here, x and y also need the frame's CameraInfo. Each rendered scene has its own focal length,
    # unlike a real camera, and on a loaded machine the node has answered a frame whose own CameraInfo was late
    # with the newest one, the previous scene's (README: after twice depth_sync_tolerance_s): x and y were then
    # 2-4 cm off. So: depth tight, the whole point within 5 cm.
    assert abs(target.position.z - obj.surface_centroid[2]) < 0.015, (target.position, obj.surface_centroid)
    assert score.extent_error_m[2] < 0.02, score
    assert score.centroid_error_m < 0.05, f"3-D centroid {score.centroid_error_m * 100:.1f} cm from the truth"


def test_scene_question_is_answered_from_the_published_frame(node_and_client):
    """Plumbing with the real default model: the answer comes from the frame we published, as text."""
    from vlm_ros.embedded.scenes import render_scene

    _, harness = node_and_client
    scene = render_scene(404, n_objects=1)
    obj = scene.objects[0]
    resp, stamp_ns, _ = ask_about(harness, scene, obj, f"what color is the {obj.shape}?", False)
    assert resp.status == 0 and resp.header.stamp.sec * 1_000_000_000 + resp.header.stamp.nanosec == stamp_ns
    from vlm_ros.embedded.scenes import COLORS

    assert resp.answer.strip() in COLORS  # a colour word; whether it is the right one is the model's accuracy


def test_colour_answer_is_right(node_and_client):
    from vlm_ros.embedded.scenes import render_scene

    _, harness = node_and_client
    scene = render_scene(404, n_objects=1)
    obj = scene.objects[0]
    resp, _, _ = ask_about(harness, scene, obj, f"what color is the {obj.shape}?", False)
    assert resp.status == 0 and resp.answer.strip() == obj.color
