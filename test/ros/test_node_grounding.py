"""Tier 2: every supported family answers a grounding request over DDS with targets, or with a message that says
why not (issue 24). Tiny random models of every family, a tiny OWLv2 detector and a tiny SAM segmenter, built
from configs.

One node process serves all families in turn (lifecycle deactivate -> cleanup -> set parameters -> configure ->
activate), so the test pays for one process start, not eight. The families' grounding behaviour in detail (modes,
masks, points, bad detector/segmenter output) is tested through the Pipeline in test/unit/test_grounding.py.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import requires_ros

pytestmark = requires_ros

FAMILIES = ["llava", "embedded", "florence2", "qwen2_5_vl", "idefics3", "paligemma", "blip2", "instructblip"]
CANNOT_GROUND = {"llava", "idefics3", "blip2", "instructblip"}
W, H = 160, 120
K = (100.0, 100.0, 80.0, 60.0)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    from vlm_ros.testing import tiny, tiny_blip2, tiny_florence2, tiny_idefics3, tiny_paligemma, tiny_qwen2_5_vl
    from vlm_ros.testing.tiny_detector import build_tiny_owlv2
    from vlm_ros.testing.tiny_segmenter import build_tiny_sam

    root = tmp_path_factory.mktemp("grounding_dds")
    builders = {"llava": tiny.build_tiny_llava, "idefics3": tiny_idefics3.build_tiny_idefics3,
                "blip2": tiny_blip2.build_tiny_blip2, "instructblip": tiny_blip2.build_tiny_instructblip,
                "florence2": tiny_florence2.build_tiny_florence2, "qwen2_5_vl": tiny_qwen2_5_vl.build_tiny_qwen2_5_vl,
                "paligemma": tiny_paligemma.build_tiny_paligemma}
    dirs = {family: str(build(root / family)) for family, build in builders.items()}
    dirs["embedded"] = ""  # the shipped weights
    dirs["owlv2"] = str(build_tiny_owlv2(root / "owlv2"))
    dirs["sam"] = str(build_tiny_sam(root / "sam"))
    return dirs


class NodeControl:
    """Lifecycle transitions and parameter sets of /vlm, one client each (reused: see test_node_faults)."""

    def __init__(self, harness):
        from lifecycle_msgs.srv import ChangeState
        from rcl_interfaces.srv import SetParameters

        self.harness = harness
        self.change = harness.node.create_client(ChangeState, "/vlm/change_state")
        self.set = harness.node.create_client(SetParameters, "/vlm/set_parameters")
        assert self.change.wait_for_service(timeout_sec=30) and self.set.wait_for_service(timeout_sec=30)

    @staticmethod
    def _wait(future, timeout: float, what: str):
        t0 = time.monotonic()
        while not future.done():
            assert time.monotonic() - t0 < timeout, f"{what} did not return in {timeout} s"
            time.sleep(0.02)
        return future.result()

    def transition(self, transition_id: int, timeout: float = 120.0) -> None:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        result = self._wait(self.change.call_async(ChangeState.Request(transition=Transition(id=transition_id))),
                            timeout, f"transition {transition_id}")
        assert result.success, f"transition {transition_id} failed"

    def set_strings(self, **values: str) -> None:
        from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
        from rcl_interfaces.srv import SetParameters

        params = [Parameter(name=k, value=ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=v))
                  for k, v in values.items()]
        result = self._wait(self.set.call_async(SetParameters.Request(parameters=params)), 10.0, "set_parameters")
        assert all(r.successful for r in result.results), [r.reason for r in result.results]

    def reconfigure(self, **values: str) -> None:
        from lifecycle_msgs.msg import Transition

        self.transition(Transition.TRANSITION_DEACTIVATE)
        self.transition(Transition.TRANSITION_CLEANUP)
        self.set_strings(**values)
        self.transition(Transition.TRANSITION_CONFIGURE)
        self.transition(Transition.TRANSITION_ACTIVATE)


def test_every_family_answers_a_grounding_request_with_targets_or_a_reason(start_process, model_dirs, rclpy_context):
    from harness import Harness

    args = ["-m", "vlm_ros.ros.node", "--ros-args", "-p", f"model:={model_dirs['llava']}", "-p", "device:=cpu",
            "-p", "warmup:=false", "-p", "max_frame_age_s:=30.0", "-p", f"grounding_detector:={model_dirs['owlv2']}",
            "-p", f"segmenter:={model_dirs['sam']}", "-p", "max_targets:=6"]
    node = start_process(args, "perception_node")
    node.wait_for_log("active: serving queries", 180)
    harness = Harness("grounding_client")
    try:
        control = NodeControl(harness)
        rgb = (np.random.default_rng(0).random((H, W, 3)) * 255).astype(np.uint8)
        harness.start_camera(rgb, rate_hz=10.0, depth_m=np.full((H, W), 1.2, np.float32), k=K)
        for i, family in enumerate(FAMILIES):
            if i:
                control.reconfigure(model=model_dirs[family])
            harness.wait_until_answering(120)
            resp = harness.query(instruction="where is the red mug?", ground=True, max_new_tokens=6, timeout_s=60.0,
                                 timeout=90.0)
            assert resp.status == 0, f"{family}: {resp.status} {resp.message}"
            assert resp.targets or resp.message, f"{family}: no targets and no reason"
            if family in CANNOT_GROUND:  # boxed by the detector, in the image, with 3-D points from depth
                assert resp.targets, f"{family}: {resp.message}"
                assert len(resp.targets) <= 6
                for t in resp.targets:
                    assert t.label == "red mug" and 0 <= t.x_min < t.x_max <= W and 0 <= t.y_min < t.y_max <= H
                    assert t.position_valid and np.isfinite([t.position.x, t.position.y, t.position.z]).all()
            elif not resp.targets:
                assert "box or point" in resp.message, f"{family}: {resp.message}"
        # without a detector, a family that cannot ground says which parameter fixes it
        control.reconfigure(model=model_dirs["blip2"], grounding_detector="", segmenter="")
        harness.wait_until_answering(120)
        resp = harness.query(instruction="where is the red mug?", ground=True, max_new_tokens=6, timeout_s=60.0,
                             timeout=90.0)
        assert resp.status == 0 and not resp.targets and "grounding_detector" in resp.message, resp.message
    finally:
        harness.close()
