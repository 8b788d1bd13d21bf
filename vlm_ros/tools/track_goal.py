"""A client's Track goal on the node's action server, for the tools (regression, node benchmark, soak).

The caller's node must be spun by an executor thread: these helpers wait on futures that thread completes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


def wait_future(future, timeout_s: float | None = None):
    """The rclpy future's result once the executor thread completes it; None after timeout_s (None: no limit)."""
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    return future.result() if done.wait(timeout_s) else None


def start_track(node, on_feedback: Callable, *, instruction: str = "detect all objects", camera: str = "",
                action: str = "/vlm/track", server_timeout_s: float = 30.0):
    """Send a Track goal; its accepted goal handle (cancel: `cancel_goal_async`). `on_feedback` gets each
    Track.Feedback. RuntimeError when no server appears within server_timeout_s or the goal is not accepted."""
    from rclpy.action import ActionClient

    from vlm_ros.action import Track

    client = ActionClient(node, Track, action)
    if not client.wait_for_server(timeout_sec=server_timeout_s):
        raise RuntimeError(f"action {action} did not appear within {server_timeout_s:.0f} s")
    sent = client.send_goal_async(Track.Goal(instruction=instruction, camera=camera),
                                  feedback_callback=lambda msg: on_feedback(msg.feedback))
    handle = wait_future(sent, 30.0)
    if handle is None or not handle.accepted:
        raise RuntimeError("the Track goal was not accepted")
    return handle
