"""Memory admission over DDS: a configure that cannot fit fails fast with the figures, the node stays alive, and a
reconfigure with a shorter context succeeds. Available memory is pinned by VLM_ROS_TEST_AVAILABLE_MB (test-only)."""

from __future__ import annotations

import time

import pytest
from conftest import requires_ros

pytestmark = requires_ros


@pytest.fixture
def harness(rclpy_context):
    from harness import Harness

    h = Harness("memory_client")
    yield h
    h.close()


def set_parameter(harness, name: str, value: int) -> None:
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    client = harness.node.create_client(SetParameters, "/vlm/set_parameters")
    assert client.wait_for_service(timeout_sec=10)
    value_msg = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
    future = client.call_async(SetParameters.Request(parameters=[Parameter(name=name, value=value_msg)]))
    t0 = time.monotonic()
    while not future.done():
        assert time.monotonic() - t0 < 10, "set_parameters did not return"
        time.sleep(0.02)
    assert future.result().results[0].successful, future.result().results[0].reason


def test_configure_that_cannot_fit_fails_fast_with_the_figures_and_a_smaller_context_then_fits(
        start_process, harness, monkeypatch):
    from lifecycle_msgs.msg import Transition
    from test_node_faults import change_state

    from vlm_ros.memory import AVAILABLE_OVERRIDE_ENV, MiB, estimate

    big, small, margin = 8192, 512, 100
    need_big, need_small = estimate("", max_tokens=big).total / MiB, estimate("", max_tokens=small).total / MiB
    available = (need_big + need_small) / 2 + margin  # between the two, once the margin is kept free
    monkeypatch.setenv(AVAILABLE_OVERRIDE_ENV, f"{available:.1f}")
    node = start_process(["-m", "vlm_ros.ros.node", "--ros-args", "-p", "autostart:=false", "-p", "device:=cpu",
                          "-p", f"engine_max_tokens:={big}", "-p", f"memory_margin_mb:={margin}.0"], "memory_node")
    harness.wait_for_service()

    ok, seconds = change_state(harness, Transition.TRANSITION_CONFIGURE)
    assert not ok and seconds < 2.0, seconds
    node.wait_for_log("configure failed: MemoryAdmissionError")
    log = node.log()
    assert f"estimated {need_big:.0f} MiB" in log and f"available {available:.0f} MiB" in log, log
    assert "would fit:" in log and "engine_max_tokens" in log, log
    assert node.proc.poll() is None  # alive, unconfigured

    set_parameter(harness, "engine_max_tokens", small)
    ok, _ = change_state(harness, Transition.TRANSITION_CONFIGURE)
    assert ok, node.log()
    assert f"estimated {need_small:.0f} MiB" in node.log() and ": fits" in node.log()
    assert change_state(harness, Transition.TRANSITION_ACTIVATE)[0]
    node.stop()
