"""Bag replay over real DDS on loopback (vlm_ros.tools.replay): the in-process BagPlayer and the CLI process.

Also home of the `bag_player` fixture factory (see its docstring) that later replay tests use.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from conftest import requires_ros

pytestmark = requires_ros
pytest.importorskip("rosbags")

from vlm_ros.core.images import decode_compressed, decode_depth, decode_image  # noqa: E402
from vlm_ros.embedded.scenes import render_scene  # noqa: E402
from vlm_ros.tools.bags import (  # noqa: E402
    DEFAULT_START_NS,
    bag_info,
    load_groundtruth,
    read_bag_messages,
    write_scene_bag,
)

COMMITTED_BAG = Path(__file__).resolve().parent.parent / "bags" / "scenes_small"
DATA_TOPICS = ("/camera/image_raw", "/camera/image_raw/compressed", "/camera/camera_info",
               "/camera/depth/image_raw", "/camera/depth/camera_info")
FRAME_NS = 200_000_000  # 5 fps in the bags below


def stamp_ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


# ---------------------------------------------------------------------------------------------- fixtures




class Listener:
    """Subscriptions on one node spun by a background executor; records (message, arrival time) per topic."""

    def __init__(self, node):
        self.node = node
        self.got: dict[str, list[tuple[object, float]]] = defaultdict(list)
        self._lock = threading.Lock()

    def subscribe(self, topic: str, cls, depth: int = 200) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(cls, topic, lambda msg, t=topic: self._add(t, msg), qos)

    def _add(self, topic: str, msg) -> None:
        with self._lock:
            self.got[topic].append((msg, time.monotonic()))

    def msgs(self, topic: str) -> list:
        with self._lock:
            return [m for m, _ in self.got[topic]]

    def times(self, topic: str) -> list[float]:
        with self._lock:
            return [t for _, t in self.got[topic]]

    def wait_for(self, counts: dict[str, int], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if all(len(self.got[t]) >= n for t, n in counts.items()):
                    return True
            time.sleep(0.02)
        return False


@pytest.fixture
def spin(rclpy_context):
    """spin(node) adds a node to an executor running in a background thread; all shut down at teardown."""
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor()
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    nodes = []

    def add(node):
        executor.add_node(node)
        nodes.append(node)
        return node

    yield add
    executor.shutdown(timeout_sec=5.0)
    thread.join(5.0)
    for node in nodes:
        node.destroy_node()


@pytest.fixture
def listener(spin):
    import rclpy

    count = iter(range(1000))
    return lambda: Listener(spin(rclpy.create_node(f"replay_listener_{next(count)}")))


def subscribe_camera(lis: Listener, topics=DATA_TOPICS, clock: str | None = "/clock") -> None:
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image

    for t in topics:
        cls = CompressedImage if t.endswith("compressed") else CameraInfo if t.endswith("camera_info") else Image
        lis.subscribe(t, cls)
    if clock:
        lis.subscribe(clock, Clock)


@pytest.fixture(scope="module")
def scene_bag(tmp_path_factory):
    """2 s, 5 fps, two scenes, raw + JPEG colour, 16UC1 depth, /clock at 20 Hz: 50 camera + 40 clock messages."""
    path = tmp_path_factory.mktemp("replay") / "scenes"
    return write_scene_bag(path, seconds=2.0, fps=5.0, scenes=(1, 6), colour="both", width=160, height=120,
                           clock_hz=20.0, noise=0.0)


# ---------------------------------------------------------------------------------------------- tests


def test_every_message_arrives_with_headers_intact_and_sim_time_follows(scene_bag, bag_player, listener, spin):
    import rclpy
    from rclpy.parameter import Parameter

    lis = listener()
    subscribe_camera(lis)
    follower = spin(rclpy.create_node("sim_time_follower",
                                      parameter_overrides=[Parameter("use_sim_time", Parameter.Type.BOOL, True)]))
    player = bag_player(scene_bag, rate=4.0, wait_for_subscribers=5, wait_timeout=15.0)
    stats = player.wait(timeout=20.0)
    assert stats.published == {t: 10 for t in DATA_TOPICS} and stats.clock_published == 40
    assert lis.wait_for({**{t: 10 for t in DATA_TOPICS}, "/clock": 40}), {t: len(v) for t, v in lis.got.items()}

    bag = defaultdict(list)
    for m in read_bag_messages(scene_bag):
        bag[m.topic].append(m.message)
    for topic in DATA_TOPICS:
        got, want = lis.msgs(topic), bag[topic]
        assert len(got) == len(want) == 10, topic  # no duplicates either
        for g, w in zip(got, want, strict=True):
            assert stamp_ns(g.header.stamp) == stamp_ns(w.header.stamp)
            assert g.header.frame_id == w.header.frame_id
            if hasattr(w, "data"):
                assert bytes(g.data) == w.data.tobytes()
            if hasattr(w, "k"):
                assert np.array_equal(g.k, w.k) and np.array_equal(g.p, w.p) and list(g.d) == list(w.d)
                assert (g.width, g.height, g.distortion_model) == (w.width, w.height, w.distortion_model)
            if hasattr(w, "encoding"):
                assert (g.encoding, g.width, g.height, g.step) == (w.encoding, w.width, w.height, w.step)
            if hasattr(w, "format"):
                assert g.format == w.format
    clock = [stamp_ns(c.clock) for c in lis.msgs("/clock")]
    assert clock == [stamp_ns(c.clock) for c in bag["/clock"]]  # the bag's own clock, in order
    assert clock[0] == DEFAULT_START_NS and clock[-1] == DEFAULT_START_NS + 1_950_000_000

    # a node with use_sim_time now runs on the bag's time
    deadline = time.monotonic() + 5.0
    while follower.get_clock().now().nanoseconds != clock[-1] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert follower.get_clock().now().nanoseconds == clock[-1]

    # the publishers carry the same type hashes as the bag metadata (what `ros2 bag play` checks against)
    info = bag_info(scene_bag)
    for topic in ("/camera/image_raw", "/camera/camera_info", "/clock"):
        pubs = player.node.get_publishers_info_by_topic(topic)
        assert [str(p.topic_type_hash) for p in pubs] == [info.topics[topic].type_hash]


def test_rate_scales_wall_time(scene_bag, bag_player, listener):
    spans = {}
    for rate in (2.0, 4.0):
        lis = listener()
        subscribe_camera(lis, ("/camera/image_raw",), clock=None)
        player = bag_player(scene_bag, rate=rate, topics=["/camera/image_raw"], wait_for_subscribers=1)
        stats = player.wait(timeout=20.0)
        assert lis.wait_for({"/camera/image_raw": 10})
        arrivals = lis.times("/camera/image_raw")
        spans[rate] = arrivals[-1] - arrivals[0]  # the bag spans 9 frame periods = 1.8 s
        assert abs((stats.last_publish - stats.first_publish) - spans[rate]) < 0.15
    assert 0.7 < spans[2.0] < 1.4, spans
    assert 0.33 < spans[4.0] < 0.8, spans
    assert 1.4 < spans[2.0] / spans[4.0] < 2.8, spans


def test_remapping_moves_topics_and_clock(scene_bag, bag_player, listener):
    lis = listener()
    subscribe_camera(lis, ("/robot/front/image", "/camera/image_raw"), clock="/sim/clock")
    subscribe_camera(lis, (), clock="/clock")
    player = bag_player(scene_bag, rate=4.0, remap={"camera/image_raw": "/robot/front/image", "/clock": "sim/clock"},
                        topics=["/camera/image_raw"], wait_for_subscribers=1)
    assert player.output_topics == {"/camera/image_raw": "/robot/front/image", "/clock": "/sim/clock"}
    player.wait(timeout=20.0)
    assert lis.wait_for({"/robot/front/image": 10, "/sim/clock": 40})
    time.sleep(0.2)
    assert len(lis.msgs("/camera/image_raw")) == 0 and len(lis.msgs("/clock")) == 0
    assert lis.node.count_publishers("/camera/image_raw") == 0
    assert [stamp_ns(m.header.stamp) for m in lis.msgs("/robot/front/image")] == [
        DEFAULT_START_NS + k * FRAME_NS for k in range(10)]


def test_loop_repeats_the_bag_and_time_jumps_back(scene_bag, bag_player, listener):
    lis = listener()
    subscribe_camera(lis, ("/camera/camera_info",))
    player = bag_player(scene_bag, rate=8.0, loop=True, topics=["/camera/camera_info"], wait_for_subscribers=1)
    assert lis.wait_for({"/camera/camera_info": 25}, timeout=15.0)  # a pass takes 0.25 s
    stats = player.stop()
    assert stats.loops >= 2
    stamps = [stamp_ns(m.header.stamp) for m in lis.msgs("/camera/camera_info")]
    one_pass = [DEFAULT_START_NS + k * FRAME_NS for k in range(10)]
    assert stamps[:20] == one_pass + one_pass
    clock = [stamp_ns(c.clock) for c in lis.msgs("/clock")]
    backwards = [i for i in range(1, len(clock)) if clock[i] < clock[i - 1]]
    assert backwards and clock[backwards[0]] == DEFAULT_START_NS


def test_clock_is_synthesised_when_the_bag_has_none(tmp_path, bag_player, listener):
    path = write_scene_bag(tmp_path / "noclock", seconds=2.0, fps=5.0, scenes=(1,), width=64, height=48,
                           topics={"clock": None}, colour="raw", depth_encoding=None)
    assert "/clock" not in bag_info(path).topics
    lis = listener()
    subscribe_camera(lis, ("/camera/image_raw",))
    player = bag_player(path, rate=2.0, clock_hz=50.0, wait_for_subscribers=1)
    stats = player.wait(timeout=20.0)
    assert lis.wait_for({"/camera/image_raw": 10})
    time.sleep(0.2)
    clock = [stamp_ns(c.clock) for c in lis.msgs("/clock")]
    stamps = [stamp_ns(m.header.stamp) for m in lis.msgs("/camera/image_raw")]
    assert clock == sorted(clock) and clock[0] >= DEFAULT_START_NS and clock[-1] == stamps[-1]
    assert set(stamps) <= set(clock)  # the clock reaches each message's time as it is published
    assert len(clock) >= 30 and stats.clock_published == len(clock)  # ticks between messages too (~0.9 s x 50 Hz)


def test_no_clock_and_start_offset(scene_bag, bag_player, listener):
    lis = listener()
    subscribe_camera(lis, ("/camera/depth/image_raw",))
    player = bag_player(scene_bag, rate=4.0, clock=False, start_offset=1.0, wait_for_subscribers=1)
    stats = player.wait(timeout=20.0)
    assert lis.wait_for({"/camera/depth/image_raw": 5})
    time.sleep(0.2)
    assert [stamp_ns(m.header.stamp) for m in lis.msgs("/camera/depth/image_raw")] == [
        DEFAULT_START_NS + 1_000_000_000 + k * FRAME_NS for k in range(5)]
    assert lis.msgs("/clock") == [] and stats.clock_published == 0
    assert player.node.count_publishers("/clock") == 0


def test_unusual_encodings_play_and_decode(tmp_path, bag_player, listener):
    path = write_scene_bag(tmp_path / "odd", storage="sqlite3", seconds=1.0, fps=4.0, scenes=(6,), width=96,
                           height=72, colour="both", colour_encoding="bgra8", compressed_format="png",
                           depth_encoding="mono16", noise=0.0)
    scene = render_scene(6, 96, 72)
    lis = listener()
    subscribe_camera(lis, ("/camera/image_raw", "/camera/image_raw/compressed", "/camera/depth/image_raw"))
    bag_player(path, rate=4.0, wait_for_subscribers=3).wait(timeout=20.0)
    assert lis.wait_for({"/camera/image_raw": 4, "/camera/image_raw/compressed": 4, "/camera/depth/image_raw": 4})
    for m in lis.msgs("/camera/image_raw"):
        assert m.encoding == "bgra8"
        assert np.array_equal(decode_image(m.encoding, m.width, m.height, m.step, m.data), scene.image)
    for m in lis.msgs("/camera/image_raw/compressed"):
        assert np.array_equal(decode_compressed(m.format, m.data), scene.image)
    for m in lis.msgs("/camera/depth/image_raw"):
        assert m.encoding == "mono16"
        depth = decode_depth(m.encoding, m.width, m.height, m.step, m.data)
        assert np.nanmax(np.abs(depth - scene.depth)) <= 0.0005 + 1e-6


def test_types_that_are_not_installed_are_skipped_and_nested_types_convert(tmp_path, bag_player, listener):
    from diagnostic_msgs.msg import DiagnosticArray
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    store.register(get_types_from_msg("int32 x", "not_installed_pkg/msg/Thing"))
    T = store.types
    path = tmp_path / "mixed"
    with Writer(path, version=9) as writer:
        thing = writer.add_connection("/thing", "not_installed_pkg/msg/Thing", typestore=store)
        diag = writer.add_connection("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray", typestore=store)
        for k in range(3):
            t = DEFAULT_START_NS + k * 100_000_000
            thing_msg = T["not_installed_pkg/msg/Thing"](x=k)
            writer.write(thing, t, store.serialize_cdr(thing_msg, "not_installed_pkg/msg/Thing"))
            status = T["diagnostic_msgs/msg/DiagnosticStatus"](
                level=k, name=f"cam{k}", message="ok", hardware_id="hw",
                values=[T["diagnostic_msgs/msg/KeyValue"](key="fps", value=str(30 + k))])
            msg = T["diagnostic_msgs/msg/DiagnosticArray"](
                header=T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=1, nanosec=k), frame_id="f"),
                status=[status])
            writer.write(diag, t, store.serialize_cdr(msg, "diagnostic_msgs/msg/DiagnosticArray"))
    lis = listener()
    lis.subscribe("/diagnostics", DiagnosticArray)
    player = bag_player(path, rate=4.0, wait_for_subscribers=1)
    stats = player.wait(timeout=20.0)
    assert "/thing" in stats.skipped and "not_installed_pkg" in stats.skipped["/thing"]
    assert stats.published == {"/diagnostics": 3}
    assert lis.wait_for({"/diagnostics": 3})
    for k, m in enumerate(lis.msgs("/diagnostics")):
        (status,) = m.status
        assert (m.header.stamp.nanosec, status.name, status.values[0].key, status.values[0].value) == (
            k, f"cam{k}", "fps", str(30 + k))
        assert status.level == bytes([k])


def test_committed_bag_replays_in_step_with_its_ground_truth(bag_player, listener):
    gt = load_groundtruth(COMMITTED_BAG)
    lis = listener()
    subscribe_camera(lis, ("/camera/image_raw/compressed", "/camera/depth/image_raw"))
    bag_player(COMMITTED_BAG, rate=8.0, wait_for_subscribers=2).wait(timeout=20.0)
    frames = [t for s in gt.scenes for t in s.frame_stamps_ns]
    assert lis.wait_for({"/camera/image_raw/compressed": len(frames), "/camera/depth/image_raw": len(frames)})
    for m in lis.msgs("/camera/image_raw/compressed"):
        scene = gt.scene_at(stamp_ns(m.header.stamp))
        img = decode_compressed(m.format, m.data)
        assert img.shape == (gt.height, gt.width, 3) and m.header.frame_id == gt.frame_ids["color"]
        assert np.abs(img.astype(int) - render_scene(scene.seed, gt.width, gt.height).image).mean() < 5.0
    assert [stamp_ns(m.header.stamp) for m in lis.msgs("/camera/depth/image_raw")] == frames


def test_cli_process_plays_with_remap_topics_and_exit_codes(scene_bag, start_process, listener):
    lis = listener()
    subscribe_camera(lis, ("/camera/image_raw", "/cli/camera_info"), clock=None)
    proc = start_process(["-m", "vlm_ros.tools.replay", str(scene_bag), "--rate", "4", "--wait-for-subscribers", "2",
                          "--wait-timeout", "20", "--remap", "/camera/camera_info:=/cli/camera_info",
                          "--topics", "/camera/image_raw", "/camera/camera_info"], "replay_cli")
    assert proc.proc.wait(30) == 0, proc.log()
    assert "done: 20 messages, 40 clock" in proc.log()
    assert lis.wait_for({"/camera/image_raw": 10, "/cli/camera_info": 10}), proc.log()

    lonely = start_process(["-m", "vlm_ros.tools.replay", str(scene_bag), "--wait-for-subscribers", "3",
                            "--wait-timeout", "0.5", "--topics", "/camera/depth/image_raw"], "replay_lonely")
    assert lonely.proc.wait(30) == 1, lonely.log()
    assert "0 of 3 subscriptions matched" in lonely.log()

    bad = start_process(["-m", "vlm_ros.tools.replay", str(scene_bag), "--remap", "nonsense"], "replay_bad")
    assert bad.proc.wait(30) == 2 and "FROM:=TO" in bad.log()


def test_invalid_player_arguments_are_refused(scene_bag, rclpy_context):
    import rclpy

    from vlm_ros.tools.replay import BagPlayer, parse_remap

    node = rclpy.create_node("replay_args")
    try:
        for bad in (dict(rate=0.0), dict(rate=float("inf")), dict(start_offset=-1.0), dict(clock_hz=0.0),
                    dict(qos_depth=0), dict(wait_for_subscribers=-1)):
            with pytest.raises(ValueError):
                BagPlayer(node, scene_bag, **bad)
        with pytest.raises(TimeoutError, match="0 of 1"):
            BagPlayer(node, scene_bag, topics=["/camera/image_raw"], wait_for_subscribers=1, wait_timeout=0.3).play()
    finally:
        node.destroy_node()
    assert parse_remap(["a:=/b", "/c/d:=e"]) == {"/a": "/b", "/c/d": "/e"}
    for bad in ("a", ":=b", "a:="):
        with pytest.raises(ValueError):
            parse_remap([bad])
