"""The node's RViz markers and annotated image for grounded targets (its two static output builders, no DDS)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import requires_ros

pytestmark = requires_ros


@pytest.fixture
def answer_and_header():
    from std_msgs.msg import Header

    from vlm_ros.core.types import Answer, Box, GeometryMethod, Mask, Shape3D, Status, Target

    ring = np.zeros((40, 40), bool)
    ring[5:35, 5:35] = True
    ring[15:25, 15:25] = False
    targets = [
        Target("red ring", Box(100, 50, 140, 90), position=(0.1, -0.05, 1.0), mask=Mask(100, 50, ring, "depth_layer"),
               shape=Shape3D((0.05, -0.1, 0.98), (0.15, 0.0, 1.02), 800, 1.0, GeometryMethod.DEPTH_LAYER)),
        Target("tip", None, position=(0.3, 0.1, 1.2), point=(200.5, 150.5),
               shape=Shape3D((0.3, 0.1, 1.2), (0.3, 0.1, 1.2), 25, 1.0, GeometryMethod.POINT)),
        Target("far box", Box(10, 10, 30, 30)),  # no 3-D
    ]
    return Answer(Status.OK, targets=targets), Header(frame_id="front_color_optical_frame")


def test_markers_show_each_3d_target_as_sphere_label_and_extent_box(answer_and_header):
    from visualization_msgs.msg import Marker

    from vlm_ros.ros.node import PerceptionNode

    answer, header = answer_and_header
    markers = PerceptionNode._markers(answer, header).markers
    assert markers[0].action == Marker.DELETEALL
    by_type = {}
    for m in markers[1:]:
        by_type.setdefault(m.type, []).append(m)
        assert m.header.frame_id == "front_color_optical_frame" and m.pose.orientation.w == 1.0
    assert len(by_type[Marker.SPHERE]) == 2 and len(by_type[Marker.TEXT_VIEW_FACING]) == 2
    (cube,) = by_type[Marker.CUBE]  # only the target with an extent of non-zero size
    assert np.allclose((cube.pose.position.x, cube.pose.position.y, cube.pose.position.z), (0.1, -0.05, 1.0))
    assert np.allclose((cube.scale.x, cube.scale.y, cube.scale.z), (0.1, 0.1, 0.04))
    assert [t.text for t in by_type[Marker.TEXT_VIEW_FACING]] == ["red ring", "tip"]
    assert len({m.id for m in markers[1:]}) == len(markers) - 1


def test_annotated_image_draws_the_mask_outline_and_the_point(answer_and_header):
    from vlm_ros.core.types import Frame
    from vlm_ros.ros.node import PerceptionNode

    answer, header = answer_and_header
    frame = Frame(np.zeros((240, 320, 3), np.uint8))
    msg = PerceptionNode._annotated(frame, answer, header)
    image = np.frombuffer(bytes(msg.data), np.uint8).reshape(240, 320, 3)
    assert (msg.width, msg.height, msg.encoding) == (320, 240, "rgb8")
    outline = (image == (0, 220, 255)).all(axis=2)
    assert outline[55, 110] and outline[64, 120]  # the ring's outer contour and its hole's
    assert not outline[70, 118] and not outline[58, 108]  # in the hole, in the ring
    assert (image[150, 195:206] != 0).any()  # the point's cross
    assert (image[10, 10:30] != 0).any()  # the box of the target without 3-D
