"""Shared test setup.

Tiers: test/unit (pure, no rclpy), test/ros (a real node in a subprocess, over DDS on loopback).
ROS traffic must stay on this machine: the environment is fixed here, before anything imports rclpy.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vlm_ros.tools.processes import PythonProcess

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent


def _rclpy_available() -> bool:
    try:
        import rclpy  # noqa: F401

        from vlm_ros.srv import Query  # noqa: F401
    except ImportError:
        return False
    return True


RCLPY_AVAILABLE = _rclpy_available()
requires_ros = pytest.mark.skipif(
    not RCLPY_AVAILABLE, reason="rclpy or the built vlm_ros interfaces are not importable (run scripts/setup.sh)"
)


class NodeProcess(PythonProcess):
    """A test's Python child process (vlm_ros.tools.processes.PythonProcess) that imports this checkout first."""

    def __init__(self, args: list[str], log_path: Path):
        super().__init__(args, log_path, pythonpath=REPO)


@pytest.fixture
def start_process(tmp_path):
    """start_process(args, name) -> NodeProcess; every process is stopped at teardown."""
    started: list[NodeProcess] = []

    def start(args: list[str], name: str = "node") -> NodeProcess:
        p = NodeProcess(args, tmp_path / f"{name}.log")
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


@pytest.fixture(scope="session")
def rclpy_context():
    """rclpy initialised once for the test process (the client side of ROS tests)."""
    import rclpy

    rclpy.init()
    yield
    rclpy.shutdown()


@pytest.fixture
def bag_player(rclpy_context):
    """bag_player(path, *, start=True, until=None, **BagPlayer kwargs) -> BagPlayer.

    Each player gets its own node; with start=True it plays in a background thread (player.wait() /
    player.stop() end it and re-raise its error). Every player is stopped and its node destroyed at teardown.
    """
    import rclpy

    from vlm_ros.tools.replay import BagPlayer

    made = []

    def make(path, *, start=True, until=None, **kwargs):
        node = rclpy.create_node(f"test_bag_player_{len(made)}")
        player = BagPlayer(node, path, **kwargs)
        made.append((node, player))
        if start:
            player.start(until)
        return player

    yield make
    for node, player in made:
        try:
            player.stop()
        finally:
            node.destroy_node()
