"""Tier 2: the perception node with backend onnxruntime answers a query end to end (tiny random LLaVA, CPU).

The node exports the model into engines_dir on configure (the export cache), then serves queries through
onnxruntime; a second node start with engine_policy refuse reuses that export instead of building.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import requires_ros

pytestmark = requires_ros


@pytest.fixture
def harness(rclpy_context):
    from harness import Harness

    h = Harness()
    yield h
    h.close()


def test_node_answers_with_backend_onnxruntime_and_reuses_the_export(start_process, tmp_path, harness):
    from vlm_ros.srv import Query

    from vlm_ros.testing.tiny import build_tiny_llava

    model = build_tiny_llava(tmp_path / "tiny_llava")
    engines = tmp_path / "engines"
    args = ["-m", "vlm_ros.ros.node", "--ros-args", "-p", f"model:={model}", "-p", "backend:=onnxruntime",
            "-p", f"engines_dir:={engines}"]
    node = start_process(args, "perception_node")
    harness.wait_for_service()
    harness.start_camera((np.random.default_rng(0).random((120, 160, 3)) * 255).astype(np.uint8), rate_hz=20)
    harness.wait_until_answering()
    resp = harness.query(instruction="where is the red ball ?", max_new_tokens=6)
    assert resp.status == Query.Response.OK, resp.message
    assert resp.timings.generated_tokens >= 1 and resp.timings.prefill > 0
    assert "onnx cache written" in node.log()
    node.stop()

    again = start_process([*args, "-p", "engine_policy:=refuse"], "perception_node_2")
    harness.wait_for_service()
    harness.wait_until_answering()
    assert harness.query(instruction="how many objects ?", max_new_tokens=4).status == Query.Response.OK
    assert "reusing onnx cache" in again.log() and "onnx cache written" not in again.log()
