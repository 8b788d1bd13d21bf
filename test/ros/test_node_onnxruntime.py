"""Tier 2: the perception node with backend onnxruntime answers a query end to end (tiny random LLaVA, CPU).

The node exports the model into engines_dir on configure (the export cache), then serves queries through
onnxruntime; a second node start with engine_policy refuse reuses that export instead of building.
"""

from __future__ import annotations

import importlib.util
import time

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
    from diagnostic_msgs.msg import DiagnosticArray

    from vlm_ros.srv import Query
    from vlm_ros.testing.tiny import build_tiny_llava

    model = build_tiny_llava(tmp_path / "tiny_llava")
    engines = tmp_path / "engines"
    args = ["-m", "vlm_ros.ros.node", "--ros-args", "-p", f"model:={model}", "-p", "backend:=onnxruntime",
            "-p", f"engines_dir:={engines}", "-p", "diagnostics_period_s:=0.2"]
    model_values = {}
    harness.node.create_subscription(
        DiagnosticArray, "/diagnostics",
        lambda msg: model_values.update({kv.key: kv.value for s in msg.status if s.name == "vlm: model"
                                         for kv in s.values}), 10)
    node = start_process(args, "perception_node")
    harness.wait_for_service()
    harness.start_camera((np.random.default_rng(0).random((120, 160, 3)) * 255).astype(np.uint8), rate_hz=20)
    harness.wait_until_answering()
    resp = harness.query(instruction="where is the red ball ?", max_new_tokens=6)
    assert resp.status == Query.Response.OK, resp.message
    assert resp.timings.generated_tokens >= 1 and resp.timings.prefill > 0
    assert "onnx cache written" in node.log() and "self-check passed (float32)" in node.log()
    deadline = time.monotonic() + 10
    while "self_check_s" not in model_values and time.monotonic() < deadline:
        time.sleep(0.05)
    assert model_values["self_check"].startswith("self-check passed (float32)")
    assert float(model_values["self_check_s"]) > 0
    node.stop()

    again = start_process([*args, "-p", "engine_policy:=refuse"], "perception_node_2")
    harness.wait_for_service()
    harness.wait_until_answering()
    assert harness.query(instruction="how many objects ?", max_new_tokens=4).status == Query.Response.OK
    assert "reusing onnx cache" in again.log() and "onnx cache written" not in again.log()


def test_node_with_a_corrupted_graph_refuses_to_configure_with_the_self_check_figures(start_process, tmp_path,
                                                                                      harness):
    """The export cache holds a broken decode graph (its output projection negated): the self-check fails
    configure, queries get NOT_READY and /diagnostics shows the figures as an ERROR."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    from vlm_ros.backends import BackendSettings, build_pipeline
    from vlm_ros.srv import Query
    from vlm_ros.testing.faults import scale_onnx_weight
    from vlm_ros.testing.tiny import build_tiny_llava

    model = build_tiny_llava(tmp_path / "tiny_llava")
    engines = tmp_path / "engines"
    pipeline, description = build_pipeline(BackendSettings(backend="onnxruntime", model=str(model),
                                                           engines_dir=str(engines), self_check=False), lambda m: None)
    scale_onnx_weight(engines / description.split(", ")[-1] / "decode.onnx", -1.0,
                      columns=pipeline.engine.runner.shapes.vocab)

    model_status = {}
    harness.node.create_subscription(
        DiagnosticArray, "/diagnostics",
        lambda msg: model_status.update({s.name: s for s in msg.status if s.name == "vlm: model"}), 10)
    node = start_process(["-m", "vlm_ros.ros.node", "--ros-args", "-p", f"model:={model}", "-p",
                          "backend:=onnxruntime", "-p", f"engines_dir:={engines}", "-p", "engine_policy:=reuse",
                          "-p", "diagnostics_period_s:=0.2"], "perception_node")
    harness.wait_for_service()
    deadline = time.monotonic() + 120
    while "configure failed" not in node.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "configure failed: SelfCheckError: self-check FAILED (float32)" in node.log()
    assert "reusing onnx cache" in node.log()
    assert harness.query(instruction="what is it ?").status == Query.Response.NOT_READY
    deadline = time.monotonic() + 10
    while "vlm: model" not in model_status and time.monotonic() < deadline:
        time.sleep(0.05)
    status = model_status["vlm: model"]
    level = status.level if isinstance(status.level, int) else int.from_bytes(status.level, "little")
    assert level == int.from_bytes(DiagnosticStatus.ERROR, "little")
    assert "self-check FAILED" in status.message and "greedy tokens agree" in status.message


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_without_tensorrt_fails_configure_and_auto_falls_back_visibly(start_process, tmp_path, harness):
    """backend tensorrt: configure fails with the reason and queries get NOT_READY; backend auto: torch, said in
    the log and in /diagnostics."""
    from diagnostic_msgs.msg import DiagnosticArray

    from vlm_ros.srv import Query
    from vlm_ros.testing.tiny import build_tiny_llava

    model = build_tiny_llava(tmp_path / "tiny_llava")
    base = ["-m", "vlm_ros.ros.node", "--ros-args", "-p", f"model:={model}", "-p", "diagnostics_period_s:=0.2"]
    node = start_process([*base, "-p", "backend:=tensorrt"], "perception_node")
    harness.wait_for_service()
    deadline = time.monotonic() + 60
    while "configure failed" not in node.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "configure failed" in node.log() and "tensorrt Python module is not installed" in node.log()
    assert harness.query(instruction="what is it ?").status == Query.Response.NOT_READY
    node.stop()

    node = start_process([*base, "-p", "backend:=auto"], "perception_node_auto")
    backends: list[str] = []
    harness.node.create_subscription(
        DiagnosticArray, "/diagnostics",
        lambda msg: backends.extend(kv.value for s in msg.status for kv in s.values if kv.key == "backend"), 10)
    harness.wait_for_service()
    harness.start_camera((np.random.default_rng(0).random((120, 160, 3)) * 255).astype(np.uint8), rate_hz=20)
    harness.wait_until_answering()
    deadline = time.monotonic() + 10
    while not any("[auto fallback:" in b for b in backends) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert any(b.startswith("torch (") and "TensorRT is not installed" in b for b in backends), backends
    assert "falling back to torch" in node.log()
