"""Bag writing and reading (vlm_ros.tools.bags): no node, no DDS; needs only the `rosbags` library."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags")
yaml = pytest.importorskip("ruamel.yaml")

from vlm_ros.core.images import decode_compressed, decode_depth, decode_image  # noqa: E402
from vlm_ros.embedded import tasks  # noqa: E402
from vlm_ros.embedded.scenes import render_scene  # noqa: E402
from vlm_ros.models.parsing import parse_loc_tokens  # noqa: E402
from vlm_ros.tools.bags import (  # noqa: E402
    DEFAULT_START_NS,
    bag_info,
    load_groundtruth,
    read_bag_messages,
    typestore,
    write_scene_bag,
)

BAGS_DIR = Path(__file__).resolve().parent.parent / "bags"
SMALL = dict(seconds=3.0, fps=4.0, scenes=(1, 6), colour="both", width=160, height=120, noise=0.0, clock_hz=10.0)
COLOR_TOPICS = ("/camera/image_raw", "/camera/image_raw/compressed")
FRAME_TOPICS = ("/camera/camera_info", "/camera/depth/camera_info", "/camera/depth/image_raw", *COLOR_TOPICS)


def stamp_ns(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same small scene bag written with both storage plugins."""
    root = tmp_path_factory.mktemp("bags")
    return {s: write_scene_bag(root / s, storage=s, **SMALL) for s in ("mcap", "sqlite3")}


def test_both_storages_hold_the_same_messages(pair):
    store = typestore()
    dumps = {}
    for storage, path in pair.items():
        dumps[storage] = [
            (m.topic, m.msgtype, m.timestamp_ns, bytes(store.serialize_cdr(m.message, m.msgtype)))
            for m in read_bag_messages(path)
        ]
    assert dumps["mcap"] == dumps["sqlite3"]
    assert (pair["mcap"] / "mcap.mcap").exists() and (pair["sqlite3"] / "sqlite3.db3").exists()
    counts = {}
    for topic, *_ in dumps["mcap"]:
        counts[topic] = counts.get(topic, 0) + 1
    assert counts == {**{t: 12 for t in FRAME_TOPICS}, "/clock": 30}  # 3 s x 4 fps; 3 s x 10 Hz


def test_headers_stamps_and_frame_ids_are_consistent(pair):
    msgs = list(read_bag_messages(pair["mcap"]))
    times = [m.timestamp_ns for m in msgs]
    assert times == sorted(times)
    frames: dict[int, dict[str, int]] = {}
    clock_seen: list[int] = []
    for i, m in enumerate(msgs):
        if m.topic == "/clock":
            value = m.message.clock.sec * 1_000_000_000 + m.message.clock.nanosec
            assert value == m.timestamp_ns
            clock_seen.append(value)
            continue
        assert stamp_ns(m.message.header) == m.timestamp_ns
        expected = "front_depth_optical_frame" if "/depth/" in m.topic else "front_color_optical_frame"
        assert m.message.header.frame_id == expected
        frames.setdefault(m.timestamp_ns, {})[m.topic] = i
        assert clock_seen and clock_seen[-1] <= m.timestamp_ns  # the clock reached this time first
    assert sorted(frames) == [DEFAULT_START_NS + k * 250_000_000 for k in range(12)]
    for topics in frames.values():
        assert set(topics) == set(FRAME_TOPICS)  # every stream once per frame, all with the same stamp
        assert topics["/camera/camera_info"] < topics["/camera/image_raw"]  # info before the image it describes
    assert clock_seen == [DEFAULT_START_NS + k * 100_000_000 for k in range(30)]


def test_payloads_decode_to_the_rendered_scene(pair):
    gt = load_groundtruth(pair["mcap"])
    for m in read_bag_messages(pair["mcap"], FRAME_TOPICS):
        scene_truth = gt.scene_at(m.timestamp_ns)
        scene = render_scene(scene_truth.seed, 160, 120)
        msg = m.message
        if m.topic == "/camera/image_raw":
            assert (msg.encoding, msg.width, msg.height, msg.step) == ("rgb8", 160, 120, 480)
            img = decode_image(msg.encoding, msg.width, msg.height, msg.step, msg.data)
            assert np.array_equal(img, scene.image)  # noise=0: the render itself
        elif m.topic == "/camera/image_raw/compressed":
            assert msg.format == "rgb8; jpeg compressed bgr8"
            img = decode_compressed(msg.format, msg.data)
            assert img.shape == (120, 160, 3)
            assert np.abs(img.astype(int) - scene.image).mean() < 4.0  # lossy, but the same picture
        elif m.topic == "/camera/depth/image_raw":
            assert msg.encoding == "16UC1"
            depth = decode_depth(msg.encoding, msg.width, msg.height, msg.step, msg.data)
            assert np.nanmax(np.abs(depth - scene.depth)) <= 0.0005 + 1e-6  # millimetre rounding
        else:
            k = scene.intrinsics
            assert (msg.width, msg.height) == (160, 120)
            assert np.allclose(msg.k, [k.fx, 0, k.cx, 0, k.fy, k.cy, 0, 0, 1])
            assert np.allclose(msg.p, [k.fx, 0, k.cx, 0, 0, k.fy, k.cy, 0, 0, 0, 1, 0])
            assert msg.distortion_model == "plumb_bob" and np.all(msg.d == 0)


def test_sensor_noise_changes_frames_but_not_the_picture(tmp_path):
    path = write_scene_bag(tmp_path / "noisy", **{**SMALL, "noise": 2.0, "colour": "raw", "scenes": (1,)})
    scene = render_scene(1, 160, 120)
    images = [decode_image(m.message.encoding, 160, 120, m.message.step, m.message.data)
              for m in read_bag_messages(path, ["/camera/image_raw"])]
    diffs = [np.abs(img.astype(int) - scene.image).mean() for img in images]
    assert all(0.5 < d < 3.0 for d in diffs)
    assert not np.array_equal(images[0], images[1])


def test_sidecar_matches_the_rendered_ground_truth(pair):
    gt = load_groundtruth(pair["mcap"])
    assert (gt.camera, gt.width, gt.height, gt.fps) == ("front", 160, 120, 4.0)
    assert gt.frame_ids == {"color": "front_color_optical_frame", "depth": "front_depth_optical_frame"}
    assert gt.encodings == {"colour": "rgb8", "compressed_format": "jpeg", "depth": "16UC1"}
    assert [s.seed for s in gt.scenes] == [1, 6]
    assert gt.scenes[0].start_ns == gt.start_ns == DEFAULT_START_NS
    assert gt.scenes[0].end_ns == gt.scenes[1].start_ns == DEFAULT_START_NS + 1_500_000_000
    assert gt.scenes[-1].end_ns == gt.end_ns == DEFAULT_START_NS + 3_000_000_000
    image_stamps = [m.timestamp_ns for m in read_bag_messages(pair["mcap"], ["/camera/image_raw"])]
    assert [t for s in gt.scenes for t in s.frame_stamps_ns] == image_stamps
    for s in gt.scenes:
        scene = render_scene(s.seed, 160, 120)
        assert s.intrinsics == scene.intrinsics
        assert len(s.objects) == len(scene.objects) > 0
        for truth, obj in zip(s.objects, scene.objects, strict=True):
            assert (truth.label, truth.shape, truth.color, truth.size) == (obj.label, obj.shape, obj.color, obj.size)
            assert truth.box == obj.box
            assert np.allclose(truth.position, obj.position)
            assert np.allclose(truth.surface_centroid, obj.surface_centroid)
            assert np.allclose(truth.surface_min, obj.surface_min) and np.allclose(truth.surface_max, obj.surface_max)
            assert np.allclose(truth.object_center, obj.object_center)
            assert np.allclose(truth.object_size, obj.object_size)
        for i, truth in enumerate(s.objects):  # masks: the visible pixels, over the box
            assert truth.mask.source == "truth" and (truth.mask.x0, truth.mask.y0) == (truth.box.x_min, truth.box.y_min)
            assert np.array_equal(truth.mask.full(160, 120), scene.labels == i)
        assert all(s.start_ns <= t < s.end_ns for t in s.frame_stamps_ns)
        assert gt.scene_at(s.frame_stamps_ns[-1]) is s
    assert gt.scene_at(gt.end_ns) is None
    # the sidecar is plain JSON that other tools can read
    raw = json.loads((pair["mcap"] / "groundtruth.json").read_text())
    assert raw["scenes"][1]["objects"][0]["box"] == list(
        (gt.scenes[1].objects[0].box.x_min, gt.scenes[1].objects[0].box.y_min,
         gt.scenes[1].objects[0].box.x_max, gt.scenes[1].objects[0].box.y_max))


def test_sidecar_of_format_1_still_loads(pair, tmp_path):
    """Bags written before masks and 3-D extents were added: same fields, the new ones None."""
    raw = json.loads((pair["mcap"] / "groundtruth.json").read_text())
    assert raw["format"] == "vlm_ros.groundtruth/2"
    raw["format"] = "vlm_ros.groundtruth/1"
    for scene in raw["scenes"]:
        for o in scene["objects"]:
            for name in ("mask", "surface_centroid", "surface_min", "surface_max", "object_center", "object_size"):
                del o[name]
    (tmp_path / "groundtruth.json").write_text(json.dumps(raw))
    old, new = load_groundtruth(tmp_path), load_groundtruth(pair["mcap"])
    assert old.instructions == new.instructions
    for a, b in zip(old.scenes, new.scenes, strict=True):
        assert [(o.label, o.box, o.position) for o in a.objects] == [(o.label, o.box, o.position) for o in b.objects]
        assert all(o.mask is None and o.surface_centroid is None and o.object_size is None for o in a.objects)
    raw["format"] = "something/3"
    (tmp_path / "groundtruth.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="groundtruth/2"):
        load_groundtruth(tmp_path)


def test_instructions_are_timed_inside_their_scene_with_correct_answers(pair):
    gt = load_groundtruth(pair["mcap"])
    assert {i.kind for i in gt.instructions} <= {"describe", "ground", "count", "exist"}
    assert {i.scene_index for i in gt.instructions} == {0, 1}
    for ins in gt.instructions:
        s = gt.scenes[ins.scene_index]
        scene = render_scene(s.seed, 160, 120)
        assert s.frame_stamps_ns[0] < ins.ask_at_ns < ins.deadline_ns == s.end_ns
        assert ins.ground == (ins.kind in ("ground", "list"))
        if ins.kind == "describe":
            assert ins.answer == tasks.describe_answer(scene)
        if ins.kind == "count":
            assert ins.answer.isdigit()
        for t in ins.targets:
            obj = s.objects[t.object_index]
            assert (t.label, t.box, t.position) == (obj.label, obj.box, obj.position)
        if ins.kind == "ground" and ins.answer != tasks.NONE_ANSWER:
            (parsed,) = parse_loc_tokens(ins.answer, 160, 120, bins=tasks.LOC_BINS).boxes
            label, box = parsed.label, parsed.box
            (target,) = ins.targets
            assert label == target.label
            bin_w, bin_h = 160 / tasks.LOC_BINS, 120 / tasks.LOC_BINS
            assert abs(box.x_min - target.box.x_min) <= bin_w and abs(box.y_max - target.box.y_max) <= bin_h


def test_metadata_records_qos_and_type_hashes_that_ros2_bag_play_reads(pair):
    store = typestore()
    for storage, path in pair.items():
        meta = yaml.YAML(typ="safe").load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        assert meta["version"] == 9  # Jazzy / Kilted: offered_qos_profiles is a YAML list, enums are names
        assert meta["storage_identifier"] == storage
        assert meta["relative_file_paths"] == [f"{storage}.{'mcap' if storage == 'mcap' else 'db3'}"]
        assert meta["message_count"] == 5 * 12 + 30
        for entry in meta["topics_with_message_count"]:
            topic = entry["topic_metadata"]
            (qos,) = topic["offered_qos_profiles"]
            assert (qos["reliability"], qos["durability"], qos["history"], qos["depth"]) == (
                "reliable", "volatile", "keep_last", 10)
            assert qos["liveliness"] == "automatic"
            assert topic["serialization_format"] == "cdr"
            assert topic["type_description_hash"] == store.hash_rihs01(topic["type"])
    info = bag_info(pair["mcap"])
    assert info.start_ns == DEFAULT_START_NS and info.end_ns == DEFAULT_START_NS + 2_900_000_000
    assert info.topics["/camera/image_raw"].qos[0].depth == 10
    assert info.topics["/clock"].msgtype == "rosgraph_msgs/msg/Clock"


def test_unusual_but_valid_encodings_round_trip(tmp_path):
    scene = render_scene(6, 160, 120)
    common = dict(seconds=1.0, fps=2.0, scenes=(6,), width=160, height=120, noise=0.0)
    a = write_scene_bag(tmp_path / "a", colour="both", colour_encoding="bgra8", compressed_format="png",
                        depth_encoding="mono16", storage="sqlite3", **common)
    b = write_scene_bag(tmp_path / "b", colour="raw", colour_encoding="bgr8", depth_encoding="32FC1", **common)
    seen = set()
    for m in [*read_bag_messages(a), *read_bag_messages(b)]:
        msg = m.message
        if m.topic == "/camera/image_raw":
            assert msg.step == 160 * (4 if msg.encoding == "bgra8" else 3)
            assert np.array_equal(decode_image(msg.encoding, 160, 120, msg.step, msg.data), scene.image)
        elif m.topic == "/camera/image_raw/compressed":
            assert msg.format == "bgra8; png compressed bgr8"
            assert bytes(msg.data[:8]) == b"\x89PNG\r\n\x1a\n"
            assert np.array_equal(decode_compressed(msg.format, msg.data), scene.image)  # lossless
        elif m.topic == "/camera/depth/image_raw":
            depth = decode_depth(msg.encoding, 160, 120, msg.step, msg.data)
            if msg.encoding == "32FC1":
                assert np.array_equal(depth, scene.depth)
            else:
                assert msg.encoding == "mono16"
                assert np.nanmax(np.abs(depth - scene.depth)) <= 0.0005 + 1e-6
        else:
            continue
        seen.add((m.topic, msg.encoding if hasattr(msg, "encoding") else msg.format))
    assert seen == {("/camera/image_raw", "bgra8"), ("/camera/image_raw", "bgr8"),
                    ("/camera/image_raw/compressed", "bgra8; png compressed bgr8"),
                    ("/camera/depth/image_raw", "mono16"), ("/camera/depth/image_raw", "32FC1")}


def test_topic_overrides_camera_name_and_disabled_streams(tmp_path):
    path = write_scene_bag(tmp_path / "wrist", seconds=1.0, fps=2.0, scenes=(1,), width=64, height=48,
                           camera="wrist", topics={"image": "robot/wrist/image", "clock": None},
                           depth_encoding=None)
    info = bag_info(path)
    assert set(info.topics) == {"/robot/wrist/image", "/camera/camera_info"}
    frame_ids = {m.message.header.frame_id for m in read_bag_messages(path)}
    assert frame_ids == {"wrist_color_optical_frame"}
    gt = load_groundtruth(path)
    assert gt.topics == {"image": "/robot/wrist/image", "camera_info": "/camera/camera_info"}
    assert gt.encodings["depth"] is None


def test_invalid_arguments_are_refused(tmp_path):
    ok = dict(seconds=1.0, fps=2.0, scenes=(1,), width=64, height=48)
    for bad in (dict(storage="rosbag"), dict(colour="jpeg"), dict(colour_encoding="yuv422"),
                dict(compressed_format="webp"), dict(depth_encoding="8UC1"), dict(seconds=0.0),
                dict(fps=float("nan")), dict(scenes=()), dict(instructions=("sing",)),
                dict(scenes=(1, 2, 3), seconds=1.0, fps=2.0), dict(topics={"lidar": "/x"})):
        with pytest.raises(ValueError):
            write_scene_bag(tmp_path / "bad", **{**ok, **bad})
        assert not (tmp_path / "bad").exists()
    write_scene_bag(tmp_path / "bag", **ok)
    with pytest.raises(FileExistsError):
        write_scene_bag(tmp_path / "bag", **ok)
    write_scene_bag(tmp_path / "bag", overwrite=True, **{**ok, "scenes": (6,)})
    assert load_groundtruth(tmp_path / "bag").scenes[0].seed == 6
    (tmp_path / "notabag").mkdir()
    (tmp_path / "notabag" / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        write_scene_bag(tmp_path / "notabag", overwrite=True, **ok)
    assert (tmp_path / "notabag" / "precious.txt").exists()


def test_read_bag_messages_filters_topics_and_time(pair):
    start = DEFAULT_START_NS + 1_000_000_000
    msgs = list(read_bag_messages(pair["sqlite3"], ["camera/camera_info"], start_ns=start,
                                  stop_ns=start + 1_000_000_000))
    assert [m.timestamp_ns for m in msgs] == [start + k * 250_000_000 for k in range(4)]
    assert {m.topic for m in msgs} == {"/camera/camera_info"}
    assert list(read_bag_messages(pair["sqlite3"], ["/not/there"])) == []


def _load_generator(name: str = "make_test_bag"):
    spec = importlib.util.spec_from_file_location(name, BAGS_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _assert_reproduced(committed: Path, fresh: Path) -> list:
    """The fresh bag holds the committed one's messages (JPEG images within a grey level on average: the bytes may
    differ between OpenCV builds; depth images byte for byte); returns the committed depth images."""
    old, new = list(read_bag_messages(committed)), list(read_bag_messages(fresh))
    assert [(m.topic, m.timestamp_ns) for m in old] == [(m.topic, m.timestamp_ns) for m in new]
    depths = []
    for a, b in zip(old, new, strict=True):
        if a.topic == "/camera/image_raw/compressed":
            diff = np.abs(decode_compressed(a.message.format, a.message.data).astype(int)
                          - decode_compressed(b.message.format, b.message.data))
            assert diff.mean() < 1.0
        elif a.topic == "/camera/depth/image_raw":
            assert np.array_equal(a.message.data, b.message.data)
            depths.append(a.message)
    return depths


def test_committed_bag_is_small_and_reproduced_by_its_generator(tmp_path):
    gen = _load_generator()
    committed = BAGS_DIR / gen.BAG_NAME
    size = sum(f.stat().st_size for f in committed.iterdir())
    assert size <= 5_000_000
    fresh = gen.make(tmp_path / gen.BAG_NAME)
    assert json.loads((fresh / "groundtruth.json").read_text()) == json.loads(
        (committed / "groundtruth.json").read_text())
    _assert_reproduced(committed, fresh)
    gt = load_groundtruth(committed)
    assert len(gt.scenes) == 3 and all(len(s.frame_stamps_ns) == 4 for s in gt.scenes)
    assert len(gt.instructions) >= 9 and math.isclose(gt.fps, 2.0)


def test_committed_tracking_bag_is_small_and_reproduced_by_its_generator(tmp_path):
    from vlm_ros.tools.tracking_bag import TRUTH_FILE, load_tracking_truth

    gen = _load_generator("make_tracking_bag")
    committed = BAGS_DIR / gen.BAG_NAME
    assert sum(f.stat().st_size for f in committed.iterdir()) <= 2_500_000
    fresh = gen.make(tmp_path / gen.BAG_NAME)
    assert json.loads((fresh / TRUTH_FILE).read_text()) == json.loads((committed / TRUTH_FILE).read_text())
    for m in _assert_reproduced(committed, fresh):
        assert m.encoding == "16UC1"
        depth = decode_depth(m.encoding, m.width, m.height, m.step, m.data)
        assert depth.shape == (60, 80) and 0.1 < np.nanmin(depth) and np.nanmax(depth) < 10.0  # mm -> metres
    truth = load_tracking_truth(committed)
    assert len(truth.frames) == 91 and math.isclose(truth.fps, 30.0) and (truth.width, truth.height) == (640, 480)
    labels = {o.label for _, objects in truth.frames for o in objects}
    assert labels == {"red cube", "blue ball", "yellow cube", "green star"}
