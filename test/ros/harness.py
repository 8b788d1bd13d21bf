"""Client side of the node tests: a node spinning in a background thread, camera publishing, service calls."""

from __future__ import annotations

import threading
import time

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from vlm_ros.core.images import encode_compressed, encode_depth, encode_image
from vlm_ros.ros.convert import make_header
from vlm_ros.srv import Query

CAMERA_PUBLISHER_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)


class Harness:
    def __init__(self, name: str = "test_client"):
        self.node = rclpy.create_node(name)
        # One thread: rclpy's multi-threaded executor busy-loops while a callback is in flight and held the GIL
        # from this process's camera thread for 0.5-3 s at a time (faulthandler: the spin thread in
        # Task.done); the node then saw its camera stop. Every callback here is short (appends, futures).
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()
        self.client = self.node.create_client(Query, "/vlm/query")
        self._publishers: dict[str, object] = {}
        self._camera_thread: threading.Thread | None = None
        self._camera_stop = threading.Event()
        self.published: list[tuple[int, str]] = []  # (stamp_ns, frame_id) of colour images sent
        self.published_at: list[float] = []  # time.monotonic() of each

    def close(self) -> None:
        self.stop_camera()
        self.executor.shutdown()
        self.node.destroy_node()

    def wait_for_service(self, timeout: float = 60.0) -> None:
        """Wait for /vlm/query and for one answered call (an empty instruction, one token at most).

        Right after discovery the node can answer before it has matched this client's response reader, and DDS
        then drops that response although the request got through: calls are repeated until one is answered,
        so that a test's own first call cannot be lost.
        """
        deadline = time.monotonic() + timeout
        assert self.client.wait_for_service(timeout_sec=timeout), "/vlm/query did not appear"
        while self._call(Query.Request(instruction="", max_new_tokens=1), 5.0) is None:
            assert time.monotonic() < deadline, f"/vlm/query answered no call within {timeout} s"

    def wait_until_answering(self, timeout: float = 60.0) -> None:
        """Poll until the node is active and has a frame (model loaded, subscriptions matched).

        A call whose response does not come is repeated (see wait_for_service).
        """
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self._call(Query.Request(instruction="", max_new_tokens=1), 5.0) or last
            if last is not None and last.status == Query.Response.OK:
                return
            time.sleep(0.1)
        outcome = "no response" if last is None else f"{last.status} {last.message}"
        raise AssertionError(f"node not answering after {timeout} s: {outcome}")

    def query(self, timeout: float = 30.0, client=None, **fields) -> Query.Response:
        """One call of /vlm/query (or of `client`, a Query client of another name), waited for at most `timeout`."""
        response = self._call(Query.Request(**fields), timeout, client)
        assert response is not None, f"no response within {timeout} s"
        return response

    def _call(self, request, timeout: float, client=None):
        """The response to one call, or None when none came within `timeout`."""
        future = (client or self.client).call_async(request)
        done = threading.Event()
        future.add_done_callback(lambda f: done.set())
        return future.result() if done.wait(timeout) else None

    def query_async(self, **fields):
        return self.client.call_async(Query.Request(**fields))

    def change_state(self, transition_id: int, timeout: float = 60.0) -> bool:
        """Trigger a lifecycle transition of /vlm; whether it succeeded."""
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        # one client, reused: a new client's first request can be answered before the server has matched the
        # client's response reader, and that response is lost (a DDS discovery race)
        if not hasattr(self, "_change_state"):
            self._change_state = self.node.create_client(ChangeState, "/vlm/change_state")
        assert self._change_state.wait_for_service(timeout_sec=10), "/vlm/change_state did not appear"
        future = self._change_state.call_async(ChangeState.Request(transition=Transition(id=transition_id)))
        deadline = time.monotonic() + timeout
        while not future.done():
            assert time.monotonic() < deadline, f"transition {transition_id} did not return in {timeout} s"
            time.sleep(0.02)
        return future.result().success

    def publisher(self, msg_type, topic: str):
        if topic not in self._publishers:
            # reliable, like most camera drivers and `ros2 bag play`: large frames are not lost in transport
            self._publishers[topic] = self.node.create_publisher(msg_type, topic, CAMERA_PUBLISHER_QOS)
        return self._publishers[topic]

    def wait_for_subscribers(self, topics: dict[str, type], timeout: float = 30.0) -> None:
        """Wait until each topic's publisher here is matched by a subscriber: messages published before the
        match are lost (volatile durability), which would, say, drop the first depth image of a test."""
        deadline = time.monotonic() + timeout
        for topic, msg_type in topics.items():
            pub = self.publisher(msg_type, topic)
            while pub.get_subscription_count() == 0:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no subscriber of {topic} within {timeout} s")
                time.sleep(0.05)

    def publish_frame(self, rgb: np.ndarray, stamp_ns: int | None = None, frame_id: str = "front_optical_frame",
                      depth_m: np.ndarray | None = None, k: tuple[float, float, float, float] | None = None,
                      topic: str = "/camera/image_raw", encoding: str = "rgb8",
                      compressed: str | None = None) -> tuple[int, str]:
        """Publish one frame (and its depth and CameraInfo, if given) with one header.

        compressed: "jpeg" or "png" publishes a CompressedImage on ``topic + "/compressed"`` instead of the Image,
        formatted as compressed_image_transport does.
        """
        stamp_ns = self.node.get_clock().now().nanoseconds if stamp_ns is None else stamp_ns
        header = make_header(stamp_ns, frame_id)
        h, w = rgb.shape[:2]
        if k is not None:
            info = CameraInfo(header=header, width=w, height=h)
            info.k = [k[0], 0.0, k[2], 0.0, k[1], k[3], 0.0, 0.0, 1.0]
            self.publisher(CameraInfo, "/camera/camera_info").publish(info)
        if depth_m is not None:
            data, step = encode_depth(depth_m, "16UC1")
            self.publisher(Image, "/camera/depth/image_raw").publish(
                Image(header=header, height=depth_m.shape[0], width=depth_m.shape[1], encoding="16UC1", step=step,
                      data=data))
        if compressed is None:
            data, step = encode_image(rgb, encoding)
            self.publisher(Image, topic).publish(Image(header=header, height=h, width=w, encoding=encoding, step=step,
                                                       data=data))
        else:
            format_string, data = encode_compressed(rgb, compressed)
            self.publisher(CompressedImage, topic + "/compressed").publish(
                CompressedImage(header=header, format=format_string, data=data))
        self.published.append((stamp_ns, frame_id))
        self.published_at.append(time.monotonic())
        return stamp_ns, frame_id

    def start_camera(self, rgb: np.ndarray, rate_hz: float = 20.0, **kwargs) -> None:
        """Publish the same scene at a fixed rate (fresh stamps) until stop_camera()."""
        self.stop_camera()
        self._camera_stop.clear()

        def run():
            while not self._camera_stop.is_set():
                self.publish_frame(rgb, **kwargs)
                time.sleep(1.0 / rate_hz)

        self._camera_thread = threading.Thread(target=run, daemon=True)
        self._camera_thread.start()

    def stop_camera(self) -> None:
        self._camera_stop.set()
        if self._camera_thread is not None:
            self._camera_thread.join()
            self._camera_thread = None
