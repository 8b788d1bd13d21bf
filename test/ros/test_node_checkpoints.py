"""Tier 2: real checkpoints, safely. A node serves a tiny Qwen3-VL over DDS; a checkpoint whose weights do not
fit its config fails configure with the keys in the log and an ERROR in /diagnostics (no random weights served).
"""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
from conftest import requires_ros

pytestmark = requires_ros


@pytest.fixture
def harness(rclpy_context):
    from harness import Harness

    h = Harness("checkpoints_client")
    yield h
    h.close()


def node_args(model, *params: str) -> list[str]:
    args = ["-m", "vlm_ros.ros.node", "--ros-args", "-p", f"model:={model}", "-p", "device:=cpu",
            "-p", "diagnostics_period_s:=0.2"]
    for p in params:
        args += ["-p", p]
    return args


def test_qwen3_vl_node_answers_like_the_core_pipeline_over_dds(start_process, tmp_path, harness):
    from vlm_ros.core.types import Frame, Request, Status, Task
    from vlm_ros.models.registry import load_adapter
    from vlm_ros.pipeline import Pipeline
    from vlm_ros.srv import Query
    from vlm_ros.testing.tiny_qwen3_vl import build_tiny_qwen3_vl

    model = build_tiny_qwen3_vl(tmp_path / "tiny_qwen3_vl", seed=2)
    rgb = (np.random.default_rng(0).random((120, 160, 3)) * 255).astype(np.uint8)
    node = start_process(node_args(model), "perception_node")
    harness.wait_for_service()
    harness.start_camera(rgb, rate_hz=20)
    harness.wait_until_answering()

    # the same frame and requests through the ROS-free core: the node must give the same answers
    pipeline = Pipeline(load_adapter(model))
    frame = Frame(rgb, stamp_ns=1, camera="front")
    for instruction, ground, task in (("", False, Task.DESCRIBE), ("what color is the mug?", False, Task.ANSWER),
                                      ("where is the red mug?", True, Task.GROUND)):
        resp = harness.query(instruction=instruction, ground=ground, max_new_tokens=8)
        expected = pipeline.answer(frame, Request(task, instruction, max_new_tokens=8, timeout_s=60.0))
        assert resp.status == Query.Response.OK, resp.message
        assert expected.status == Status.OK and expected.text
        assert resp.answer == expected.text and resp.timings.generated_tokens == expected.generated_tokens
        assert len(resp.targets) == len(expected.targets)
    node.stop()


def test_weights_that_do_not_fit_the_config_fail_configure_with_the_keys_and_diagnostics_error(
        start_process, tmp_path, harness):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from safetensors.torch import load_file, save_file

    from vlm_ros.srv import Query
    from vlm_ros.testing.tiny import build_tiny_llava

    model = build_tiny_llava(tmp_path / "tiny_llava")
    bad = tmp_path / "renamed"
    shutil.copytree(model, bad)
    tensors = load_file(bad / "model.safetensors")
    save_file({k.replace("multi_modal_projector", "projector"): v for k, v in tensors.items()},
              bad / "model.safetensors", metadata={"format": "pt"})

    model_status = {}
    harness.node.create_subscription(
        DiagnosticArray, "/diagnostics",
        lambda msg: model_status.update({s.name: s for s in msg.status if s.name == "vlm: model"}), 10)
    node = start_process(node_args(bad), "perception_node")
    harness.wait_for_service()
    deadline = time.monotonic() + 120
    while "configure failed" not in node.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = node.log()
    assert "configure failed: CheckpointError" in log
    assert "4 missing (model.multi_modal_projector.linear_1.bias" in log and "4 unexpected (" in log
    assert harness.query(instruction="what is it ?").status == Query.Response.NOT_READY

    deadline = time.monotonic() + 10
    while "vlm: model" not in model_status and time.monotonic() < deadline:
        time.sleep(0.05)
    status = model_status["vlm: model"]
    level = status.level if isinstance(status.level, int) else int.from_bytes(status.level, "little")
    assert level == int.from_bytes(DiagnosticStatus.ERROR, "little")
    assert status.message.startswith("configure failed: CheckpointError") and "do not match" in status.message
    assert {kv.key: kv.value for kv in status.values}["state"] == "unconfigured"
