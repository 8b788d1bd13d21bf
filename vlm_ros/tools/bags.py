"""Write rosbag2 recordings of rendered camera streams, with ground truth beside them, and read any bag back.

ROS-free: bags are written and read with the pure-Python `rosbags` library, so this runs without a ROS install.
The bags are standard rosbag2 (metadata version 9, the format of Jazzy and Kilted) in mcap or sqlite3 storage:
each topic records its offered QoS and its type hash, and `ros2 bag play` replays them.

A scene bag holds, per frame, for one camera (default topic names of the node's camera "front"):

    /camera/camera_info, /camera/image_raw and/or /camera/image_raw/compressed,
    /camera/depth/camera_info, /camera/depth/image_raw, and /clock (rosgraph_msgs/Clock, every 1/clock_hz s).

Header stamps equal the bag timestamps; frame ids are `<camera>_color_optical_frame` and
`<camera>_depth_optical_frame`. Each scene of `vlm_ros.embedded.scenes` is held for `seconds / len(scenes)`
seconds (several frames with light per-frame sensor noise), then the next follows. The ground truth (objects,
boxes, masks, 3-D positions and extents per scene, and instructions with the time to ask them and the expected
answer) is written to `<bag>/groundtruth.json`; :func:`load_groundtruth` reads it into dataclasses (files of the
earlier format 1, without masks and extents, too).

An object's mask in the sidecar: {"x0", "y0", "width", "height", "png"}: its visible pixels over the box at
(x0, y0), a mono8 PNG (255 = object) of width x height, base64-encoded.
"""

from __future__ import annotations

import base64
import bisect
import functools
import json
import math
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from vlm_ros.core.images import encode_compressed, encode_depth, encode_image
from vlm_ros.core.types import Box, CameraIntrinsics, Mask
from vlm_ros.embedded import tasks
from vlm_ros.embedded.scenes import Scene, render_scene

__all__ = [
    "BAG_VERSION",
    "DEFAULT_START_NS",
    "DEFAULT_TOPICS",
    "DEFAULT_INSTRUCTION_KINDS",
    "RECORDED_QOS",
    "BagMessage",
    "BagInfo",
    "TopicInfo",
    "ObjectTruth",
    "TargetTruth",
    "InstructionTruth",
    "SceneTruth",
    "GroundTruth",
    "typestore",
    "write_scene_bag",
    "read_bag_messages",
    "bag_info",
    "groundtruth_path",
    "load_groundtruth",
]

BAG_VERSION = 9  # rosbag2 metadata version written by Jazzy and Kilted (QoS stored as a YAML list)
DEFAULT_START_NS = 1_700_000_000 * 1_000_000_000  # a fixed wall-clock-like start: bags are reproducible
GROUNDTRUTH_FILE = "groundtruth.json"
GROUNDTRUTH_FORMAT = "vlm_ros.groundtruth/2"  # 2: object masks and 3-D extents
_READABLE_FORMATS = ("vlm_ros.groundtruth/1", GROUNDTRUTH_FORMAT)

# Stream role -> topic. Absolute names: a bag stores resolved names. A role mapped to None is not written.
DEFAULT_TOPICS: dict[str, str] = {
    "image": "/camera/image_raw",
    "compressed": "/camera/image_raw/compressed",
    "camera_info": "/camera/camera_info",
    "depth": "/camera/depth/image_raw",
    "depth_info": "/camera/depth/camera_info",
    "clock": "/clock",
}
DEFAULT_INSTRUCTION_KINDS: tuple[str, ...] = ("describe", "ground", "count", "exist")

# What a camera driver's default publisher offers, as rosbag2 records it: reliable, volatile, no deadline.
# `ros2 bag play` republishes with the recorded reliability and durability.
_INFINITE = QosTime(9_223_372_036, 854_775_807)  # RMW_DURATION_INFINITE
RECORDED_QOS = Qos(
    QosHistory.KEEP_LAST,
    10,
    QosReliability.RELIABLE,
    QosDurability.VOLATILE,
    _INFINITE,
    _INFINITE,
    QosLiveliness.AUTOMATIC,
    _INFINITE,
    False,
)

_COLOUR_MODES = ("raw", "compressed", "both")
_DEPTH_ENCODINGS = {"16uc1": "16UC1", "mono16": "mono16", "32fc1": "32FC1"}
_COLOUR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")  # what core.images.encode_image writes
_STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}


@functools.lru_cache(maxsize=1)
def typestore():
    """The rosbags typestore of ROS 2 Kilted (or the newest ROS 2 store this rosbags version has)."""
    for name in ("ROS2_KILTED", "ROS2_JAZZY", "LATEST"):
        store = getattr(Stores, name, None)
        if store is not None:
            return get_typestore(store)
    raise RuntimeError("rosbags has no ROS 2 typestore")  # pragma: no cover


# ---------------------------------------------------------------------------------------------- ground truth


@dataclass(frozen=True)
class ObjectTruth:
    label: str  # "<color> <shape>"
    shape: str
    color: str
    size: str
    box: Box  # visible extent, source-image pixels
    position: tuple[float, float, float]  # colour camera optical frame, metres
    visible_fraction: float
    # format 2 (None when read from a format-1 file); 3-D in the colour camera optical frame, metres, as
    # vlm_ros.embedded.scenes defines them
    mask: Mask | None = field(default=None, compare=False)  # visible pixels (after occlusion), source "truth"
    surface_centroid: tuple[float, float, float] | None = None  # of the visible surface
    surface_min: tuple[float, float, float] | None = None  # axis-aligned extent of the visible surface
    surface_max: tuple[float, float, float] | None = None
    object_center: tuple[float, float, float] | None = None  # the whole object, as the renderer knows it
    object_size: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class TargetTruth:
    label: str
    box: Box
    position: tuple[float, float, float]
    object_index: int  # into SceneTruth.objects


@dataclass(frozen=True)
class InstructionTruth:
    """An instruction to send while its scene is on camera, and what a correct node answers."""

    instruction: str
    kind: str  # one of vlm_ros.embedded.tasks.KINDS
    ground: bool  # set the Query request's `ground` flag
    answer: str  # the embedded model's answer format (boxes as <loc_..> tokens)
    targets: tuple[TargetTruth, ...]
    scene_index: int
    ask_at_ns: int  # bag time to send it (after the scene's first frame)
    deadline_ns: int  # bag time at which the next scene starts


@dataclass(frozen=True)
class SceneTruth:
    index: int
    seed: int
    start_ns: int  # bag time span [start_ns, end_ns) during which this scene is on camera
    end_ns: int
    frame_stamps_ns: tuple[int, ...]
    intrinsics: CameraIntrinsics
    objects: tuple[ObjectTruth, ...]


@dataclass(frozen=True)
class GroundTruth:
    camera: str
    width: int
    height: int
    fps: float
    start_ns: int
    end_ns: int
    frame_ids: dict[str, str]  # {"color": ..., "depth": ...}
    topics: dict[str, str]  # role -> topic, only the roles written
    encodings: dict[str, str | None]  # {"colour", "compressed_format", "depth"}
    noise: float
    scenes: tuple[SceneTruth, ...]
    instructions: tuple[InstructionTruth, ...]

    def scene_at(self, stamp_ns: int) -> SceneTruth | None:
        """The scene on camera at a bag time, or None outside the bag."""
        for scene in self.scenes:
            if scene.start_ns <= stamp_ns < scene.end_ns:
                return scene
        return None


def _box_list(box: Box) -> list[float]:
    return [box.x_min, box.y_min, box.x_max, box.y_max]


def _mask_to_json(mask: Mask) -> dict:
    ok, png = cv2.imencode(".png", mask.data.astype(np.uint8) * 255)
    if not ok:  # pragma: no cover - OpenCV always encodes a mono8 image
        raise RuntimeError("PNG encoding of a mask failed")
    h, w = mask.data.shape
    return {"x0": mask.x0, "y0": mask.y0, "width": w, "height": h, "png": base64.b64encode(png.tobytes()).decode()}


def _mask_from_json(d: dict) -> Mask:
    data = cv2.imdecode(np.frombuffer(base64.b64decode(d["png"]), np.uint8), cv2.IMREAD_GRAYSCALE)
    if data is None or data.shape != (int(d["height"]), int(d["width"])):
        raise ValueError(f"mask PNG does not decode to {d['width']}x{d['height']}")
    return Mask(int(d["x0"]), int(d["y0"]), data > 127, "truth")


_OBJECT_3D = ("surface_centroid", "surface_min", "surface_max", "object_center", "object_size")


def _object_to_json(o: ObjectTruth) -> dict:
    d = {
        "label": o.label,
        "shape": o.shape,
        "color": o.color,
        "size": o.size,
        "box": _box_list(o.box),
        "position": list(o.position),
        "visible_fraction": o.visible_fraction,
    }
    if o.mask is not None:
        d["mask"] = _mask_to_json(o.mask)
    d.update({name: list(getattr(o, name)) for name in _OBJECT_3D if getattr(o, name) is not None})
    return d


def _groundtruth_to_json(gt: GroundTruth) -> dict:
    return {
        "format": GROUNDTRUTH_FORMAT,
        "camera": gt.camera,
        "width": gt.width,
        "height": gt.height,
        "fps": gt.fps,
        "start_ns": gt.start_ns,
        "end_ns": gt.end_ns,
        "frame_ids": gt.frame_ids,
        "topics": gt.topics,
        "encodings": gt.encodings,
        "noise": gt.noise,
        "scenes": [
            {
                "index": s.index,
                "seed": s.seed,
                "start_ns": s.start_ns,
                "end_ns": s.end_ns,
                "frame_stamps_ns": list(s.frame_stamps_ns),
                "intrinsics": dict(fx=s.intrinsics.fx, fy=s.intrinsics.fy, cx=s.intrinsics.cx, cy=s.intrinsics.cy),
                "objects": [_object_to_json(o) for o in s.objects],
            }
            for s in gt.scenes
        ],
        "instructions": [
            {
                "instruction": i.instruction,
                "kind": i.kind,
                "ground": i.ground,
                "answer": i.answer,
                "targets": [
                    dict(label=t.label, box=_box_list(t.box), position=list(t.position), object_index=t.object_index)
                    for t in i.targets
                ],
                "scene_index": i.scene_index,
                "ask_at_ns": i.ask_at_ns,
                "ask_at_s": (i.ask_at_ns - gt.start_ns) / 1e9,  # from the bag start, for people reading the file
                "deadline_ns": i.deadline_ns,
            }
            for i in gt.instructions
        ],
    }


def _groundtruth_from_json(d: dict) -> GroundTruth:
    if d.get("format") not in _READABLE_FORMATS:
        raise ValueError(f"not a {' or '.join(_READABLE_FORMATS)} file (format={d.get('format')!r})")

    def pos(v) -> tuple[float, float, float]:
        return (float(v[0]), float(v[1]), float(v[2]))

    def optional_3d(o: dict) -> dict:
        return {name: pos(o[name]) for name in _OBJECT_3D if name in o}

    scenes = tuple(
        SceneTruth(
            index=int(s["index"]),
            seed=int(s["seed"]),
            start_ns=int(s["start_ns"]),
            end_ns=int(s["end_ns"]),
            frame_stamps_ns=tuple(int(t) for t in s["frame_stamps_ns"]),
            intrinsics=CameraIntrinsics(**{k: float(v) for k, v in s["intrinsics"].items()}),
            objects=tuple(
                ObjectTruth(
                    label=o["label"],
                    shape=o["shape"],
                    color=o["color"],
                    size=o["size"],
                    box=Box(*o["box"]),
                    position=pos(o["position"]),
                    visible_fraction=float(o["visible_fraction"]),
                    mask=_mask_from_json(o["mask"]) if "mask" in o else None,
                    **optional_3d(o),
                )
                for o in s["objects"]
            ),
        )
        for s in d["scenes"]
    )
    instructions = tuple(
        InstructionTruth(
            instruction=i["instruction"],
            kind=i["kind"],
            ground=bool(i["ground"]),
            answer=i["answer"],
            targets=tuple(
                TargetTruth(t["label"], Box(*t["box"]), pos(t["position"]), int(t["object_index"]))
                for t in i["targets"]
            ),
            scene_index=int(i["scene_index"]),
            ask_at_ns=int(i["ask_at_ns"]),
            deadline_ns=int(i["deadline_ns"]),
        )
        for i in d["instructions"]
    )
    return GroundTruth(
        camera=d["camera"],
        width=int(d["width"]),
        height=int(d["height"]),
        fps=float(d["fps"]),
        start_ns=int(d["start_ns"]),
        end_ns=int(d["end_ns"]),
        frame_ids=dict(d["frame_ids"]),
        topics=dict(d["topics"]),
        encodings=dict(d["encodings"]),
        noise=float(d["noise"]),
        scenes=scenes,
        instructions=instructions,
    )


def groundtruth_path(bag: str | Path) -> Path:
    """Where the sidecar of a bag is: `<bag>/groundtruth.json`, else `<bag>.groundtruth.json` if that exists."""
    bag = Path(bag)
    inside = bag / GROUNDTRUTH_FILE
    beside = bag.with_name(bag.name + "." + GROUNDTRUTH_FILE)
    return beside if not inside.exists() and beside.exists() else inside


def load_groundtruth(bag: str | Path) -> GroundTruth:
    """Read the ground-truth sidecar of a bag written by :func:`write_scene_bag`."""
    with open(groundtruth_path(bag), encoding="utf-8") as f:
        return _groundtruth_from_json(json.load(f))


# ---------------------------------------------------------------------------------------------- writing


def _scene_truth(scene: Scene, index: int, start_ns: int, end_ns: int, stamps: Sequence[int]) -> SceneTruth:
    return SceneTruth(
        index=index,
        seed=scene.seed,
        start_ns=start_ns,
        end_ns=end_ns,
        frame_stamps_ns=tuple(stamps),
        intrinsics=scene.intrinsics,
        objects=tuple(
            ObjectTruth(
                o.label, o.shape, o.color, o.size, o.box, tuple(float(v) for v in o.position),
                float(o.visible_fraction),
                mask=scene.object_mask(i), surface_centroid=o.surface_centroid, surface_min=o.surface_min,
                surface_max=o.surface_max, object_center=o.object_center, object_size=o.object_size,
            )
            for i, o in enumerate(scene.objects)
        ),
    )


def _scene_instructions(
    scene: Scene, index: int, kinds: Sequence[str], first_frame_ns: int, end_ns: int
) -> list[InstructionTruth]:
    """Questions of the given kinds (those that apply to the scene), asked between its first frame and its end."""
    rng = np.random.default_rng((scene.seed, 1_000_003))  # independent of the renderer's stream
    examples = [ex for ex in (tasks.GENERATORS[k](scene, rng) for k in kinds) if ex is not None]
    out = []
    window = end_ns - first_frame_ns
    for j, ex in enumerate(examples):
        # spread over 20-70 % of the time left after the first frame: the frame is there, the scene stays a while
        ask = first_frame_ns + int(window * (0.2 + 0.5 * j / max(1, len(examples))))
        targets = []
        for label, box in ex.targets:
            k = next(i for i, o in enumerate(scene.objects) if o.box == box and o.label == label)
            targets.append(TargetTruth(label, box, tuple(float(v) for v in scene.objects[k].position), k))
        out.append(
            InstructionTruth(
                instruction=ex.instruction,
                kind=ex.kind,
                ground=ex.kind in ("ground", "list"),
                answer=ex.answer,
                targets=tuple(targets),
                scene_index=index,
                ask_at_ns=ask,
                deadline_ns=end_ns,
            )
        )
    return out


def _time_msg(ns: int):
    T = typestore().types["builtin_interfaces/msg/Time"]
    return T(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def _header(ns: int, frame_id: str):
    H = typestore().types["std_msgs/msg/Header"]
    return H(stamp=_time_msg(ns), frame_id=frame_id)


def _camera_info(ns: int, frame_id: str, width: int, height: int, k: CameraIntrinsics):
    types = typestore().types
    return types["sensor_msgs/msg/CameraInfo"](
        header=_header(ns, frame_id),
        height=height,
        width=width,
        distortion_model="plumb_bob",
        d=np.zeros(5, np.float64),  # rendered images are rectified
        k=np.array([k.fx, 0.0, k.cx, 0.0, k.fy, k.cy, 0.0, 0.0, 1.0], np.float64),
        r=np.eye(3, dtype=np.float64).ravel(),
        p=np.array([k.fx, 0.0, k.cx, 0.0, 0.0, k.fy, k.cy, 0.0, 0.0, 0.0, 1.0, 0.0], np.float64),
        binning_x=0,
        binning_y=0,
        roi=types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
    )


def _raw_image(ns: int, frame_id: str, data: bytes, step: int, width: int, height: int, encoding: str):
    return typestore().types["sensor_msgs/msg/Image"](
        header=_header(ns, frame_id),
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=0,
        step=step,
        data=np.frombuffer(data, np.uint8),
    )


def _compressed(ns: int, frame_id: str, rgb: np.ndarray, colour_encoding: str, fmt: str, jpeg_quality: int):
    """A CompressedImage as compressed_image_transport writes it (see core.images.encode_compressed)."""
    format_string, data = encode_compressed(rgb, fmt, colour_encoding, jpeg_quality)
    return typestore().types["sensor_msgs/msg/CompressedImage"](
        header=_header(ns, frame_id), format=format_string, data=np.frombuffer(data, np.uint8))


def _check_args(
    storage, seconds, fps, colour, colour_encoding, compressed_format, depth_encoding, scenes, kinds, clock_hz
) -> None:
    if storage not in _STORAGES:
        raise ValueError(f"storage must be one of {sorted(_STORAGES)}, got {storage!r}")
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"seconds must be a positive number, got {seconds!r}")
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if not (isinstance(clock_hz, (int, float)) and math.isfinite(clock_hz) and clock_hz > 0):
        raise ValueError(f"clock_hz must be a positive number, got {clock_hz!r}")
    if colour not in _COLOUR_MODES:
        raise ValueError(f"colour must be one of {_COLOUR_MODES}, got {colour!r}")
    if colour_encoding not in _COLOUR_ENCODINGS:
        raise ValueError(f"colour_encoding must be one of {_COLOUR_ENCODINGS}, got {colour_encoding!r}")
    if compressed_format not in ("jpeg", "png"):
        raise ValueError(f"compressed_format must be 'jpeg' or 'png', got {compressed_format!r}")
    if depth_encoding is not None and depth_encoding.lower() not in _DEPTH_ENCODINGS:
        raise ValueError(f"depth_encoding must be 16UC1, mono16, 32FC1 or None, got {depth_encoding!r}")
    if not scenes:
        raise ValueError("scenes must name at least one seed")
    unknown = [k for k in kinds if k not in tasks.GENERATORS]
    if unknown:
        raise ValueError(f"unknown instruction kinds {unknown}; known: {list(tasks.GENERATORS)}")


def write_scene_bag(
    path: str | Path,
    *,
    storage: str = "mcap",
    seconds: float = 6.0,
    fps: float = 5.0,
    camera: str = "front",
    topics: Mapping[str, str | None] | None = None,
    colour: str = "raw",
    colour_encoding: str = "rgb8",
    compressed_format: str = "jpeg",
    depth_encoding: str | None = "16UC1",
    scenes: Sequence[int] = (0, 1, 2),
    instructions: Sequence[str] = DEFAULT_INSTRUCTION_KINDS,
    width: int = 640,
    height: int = 480,
    start_ns: int = DEFAULT_START_NS,
    clock_hz: float = 20.0,
    noise: float = 2.0,
    jpeg_quality: int = 90,
    overwrite: bool = False,
) -> Path:
    """Write a rosbag2 of rendered scenes and its ground-truth sidecar; returns the bag directory.

    seconds: total length; the scenes (render seeds) share it equally, each held for several frames.
    colour: "raw" (sensor_msgs/Image in `colour_encoding`), "compressed" (CompressedImage in `compressed_format`)
    or "both". depth_encoding: 16UC1 (mm), mono16 (mm, labelled mono16), 32FC1 (m) or None for no depth.
    topics: overrides of DEFAULT_TOPICS by role; a role mapped to None is not written (e.g. {"clock": None}).
    instructions: question kinds (vlm_ros.embedded.tasks.KINDS) asked per scene where they apply.
    noise: standard deviation of the per-frame Gaussian sensor noise on colour (0 = exact renders).
    """
    kinds = tuple(instructions)
    _check_args(
        storage, seconds, fps, colour, colour_encoding, compressed_format, depth_encoding, scenes, kinds, clock_hz
    )
    roles = dict(DEFAULT_TOPICS)
    for role, name in (topics or {}).items():
        if role not in DEFAULT_TOPICS:
            raise ValueError(f"unknown topic role {role!r}; known: {list(DEFAULT_TOPICS)}")
        roles[role] = name
    if colour == "raw":
        roles["compressed"] = None
    elif colour == "compressed":
        roles["image"] = None
    if depth_encoding is None:
        roles["depth"] = roles["depth_info"] = None
    roles = {r: ("/" + n.lstrip("/")) for r, n in roles.items() if n}
    if "image" not in roles and "compressed" not in roles:
        raise ValueError("no colour topic left to write")

    path = Path(path)
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"{path} exists (pass overwrite=True to replace a bag)")
        if path.is_dir() and any(path.iterdir()) and not (path / "metadata.yaml").exists():
            raise FileExistsError(f"{path} is a non-empty directory that is not a bag; not removing it")
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    # --- the timeline: frames every 1/fps, scene k on camera during [k, k+1) * seconds / n ---
    total_ns = int(round(seconds * 1e9))
    n_frames = max(1, math.ceil(seconds * fps - 1e-9))
    frame_ns = [start_ns + int(round(i * 1e9 / fps)) for i in range(n_frames)]
    bounds = [start_ns + -(-k * total_ns // len(scenes)) for k in range(len(scenes) + 1)]  # ceil: exact integers
    scene_of_frame = [bisect.bisect_right(bounds, t) - 1 for t in frame_ns]
    per_scene = [[t for t, s in zip(frame_ns, scene_of_frame, strict=True) if s == k] for k in range(len(scenes))]
    if any(not stamps for stamps in per_scene):
        raise ValueError(f"{len(scenes)} scenes in {seconds} s at {fps} fps leave a scene without frames")
    n_ticks = int(total_ns * clock_hz // 1_000_000_000) + 1
    clock_ns = [start_ns + int(round(i * 1e9 / clock_hz)) for i in range(n_ticks)] if "clock" in roles else []

    color_frame, depth_frame = f"{camera}_color_optical_frame", f"{camera}_depth_optical_frame"
    depth_label = _DEPTH_ENCODINGS[depth_encoding.lower()] if depth_encoding else None
    msgtypes = {
        "image": "sensor_msgs/msg/Image",
        "compressed": "sensor_msgs/msg/CompressedImage",
        "camera_info": "sensor_msgs/msg/CameraInfo",
        "depth": "sensor_msgs/msg/Image",
        "depth_info": "sensor_msgs/msg/CameraInfo",
        "clock": "rosgraph_msgs/msg/Clock",
    }
    store = typestore()
    scene_truths: list[SceneTruth] = []
    instruction_truths: list[InstructionTruth] = []

    writer = Writer(path, version=BAG_VERSION, storage_plugin=_STORAGES[storage])
    writer.set_custom_data("vlm_ros.groundtruth", GROUNDTRUTH_FILE)
    with writer:
        conns = {
            role: writer.add_connection(name, msgtypes[role], typestore=store, offered_qos_profiles=[RECORDED_QOS])
            for role, name in roles.items()
        }

        def put(role: str, ns: int, msg) -> None:
            writer.write(conns[role], ns, store.serialize_cdr(msg, msgtypes[role]))

        ticks = iter(clock_ns + [2**63 - 1])
        next_tick = next(ticks)
        scene: Scene | None = None
        for i, (t, k) in enumerate(zip(frame_ns, scene_of_frame, strict=True)):
            while next_tick <= t:  # clock first: a sim-time node sees the time before the frame
                put("clock", next_tick, store.types["rosgraph_msgs/msg/Clock"](clock=_time_msg(next_tick)))
                next_tick = next(ticks)
            if scene is None or scene_truths[-1].index != k:  # the next scene: render it once
                scene = render_scene(int(scenes[k]), width, height)
                scene_truths.append(_scene_truth(scene, k, bounds[k], bounds[k + 1], per_scene[k]))
                instruction_truths += _scene_instructions(scene, k, kinds, per_scene[k][0], bounds[k + 1])
            rgb = scene.image
            if noise > 0:
                rng = np.random.default_rng((scene.seed, i))
                jitter = rng.normal(0.0, noise, rgb.shape).astype(np.float32)  # (H, W, 3)
                rgb = np.clip(rgb.astype(np.float32) + jitter, 0, 255).astype(np.uint8)
            k_int = scene.intrinsics
            if "camera_info" in roles:
                put("camera_info", t, _camera_info(t, color_frame, width, height, k_int))
            if "depth" in roles:
                if "depth_info" in roles:  # registered depth: same intrinsics and size as the colour image
                    put("depth_info", t, _camera_info(t, depth_frame, width, height, k_int))
                data, step = encode_depth(scene.depth, "32FC1" if depth_label == "32FC1" else "16UC1")
                put("depth", t, _raw_image(t, depth_frame, data, step, width, height, depth_label))
            if "image" in roles:
                data, step = encode_image(rgb, colour_encoding)
                put("image", t, _raw_image(t, color_frame, data, step, width, height, colour_encoding))
            if "compressed" in roles:
                put("compressed", t, _compressed(t, color_frame, rgb, colour_encoding, compressed_format, jpeg_quality))
        end_ns = start_ns + total_ns
        while next_tick < end_ns:
            put("clock", next_tick, store.types["rosgraph_msgs/msg/Clock"](clock=_time_msg(next_tick)))
            next_tick = next(ticks)

    gt = GroundTruth(
        camera=camera,
        width=width,
        height=height,
        fps=float(fps),
        start_ns=start_ns,
        end_ns=start_ns + total_ns,
        frame_ids={"color": color_frame, "depth": depth_frame},
        topics=roles,
        encodings={
            "colour": colour_encoding if "image" in roles else None,
            "compressed_format": compressed_format if "compressed" in roles else None,
            "depth": depth_label if "depth" in roles else None,
        },
        noise=float(noise),
        scenes=tuple(scene_truths),
        instructions=tuple(instruction_truths),
    )
    with open(path / GROUNDTRUTH_FILE, "w", encoding="utf-8") as f:
        json.dump(_groundtruth_to_json(gt), f, indent=1)
        f.write("\n")
    return path


# ---------------------------------------------------------------------------------------------- reading


class BagMessage(NamedTuple):
    topic: str
    msgtype: str  # e.g. "sensor_msgs/msg/Image"
    timestamp_ns: int  # the bag's (receive) timestamp
    message: object  # a rosbags message dataclass (numpy arrays for numeric arrays)


@dataclass(frozen=True)
class TopicInfo:
    name: str
    msgtype: str
    message_count: int
    qos: tuple[Qos, ...]  # offered QoS profiles as recorded (empty if the bag has none)
    type_hash: str  # RIHS01_... as recorded ("" if the bag has none)


@dataclass(frozen=True)
class BagInfo:
    path: Path
    start_ns: int  # earliest message
    end_ns: int  # latest message (inclusive)
    message_count: int
    topics: dict[str, TopicInfo]

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


def _open_reader(path: str | Path) -> AnyReader:
    return AnyReader([Path(path)], default_typestore=typestore())


def bag_info(path: str | Path) -> BagInfo:
    """Topics, types, counts, recorded QoS and time span of a bag (mcap or sqlite3)."""
    with _open_reader(path) as reader:
        topics: dict[str, TopicInfo] = {}
        for c in reader.connections:
            qos = tuple(getattr(c.ext, "offered_qos_profiles", ()) or ())
            old = topics.get(c.topic)
            topics[c.topic] = TopicInfo(
                c.topic,
                c.msgtype,
                c.msgcount + (old.message_count if old else 0),
                (old.qos if old else ()) + qos,
                c.digest if isinstance(c.digest, str) and c.digest.startswith("RIHS01_") else "",
            )
        count = reader.message_count
        start = reader.start_time if count else 0
        end = reader.end_time - 1 if count else 0  # rosbags' end_time is one past the last message
        return BagInfo(Path(path), start, max(start, end), count, topics)


def read_bag_messages(
    path: str | Path,
    topics: Sequence[str] | None = None,
    *,
    start_ns: int | None = None,
    stop_ns: int | None = None,
) -> Iterator[BagMessage]:
    """Yield (topic, msgtype, timestamp_ns, message) in time order from any rosbag2 (mcap or sqlite3).

    topics: names to keep (None = all). start_ns / stop_ns: keep messages with start_ns <= t < stop_ns.
    """
    wanted = None if topics is None else {"/" + t.lstrip("/") for t in topics}
    with _open_reader(path) as reader:
        conns = [c for c in reader.connections if wanted is None or c.topic in wanted]
        if not conns:
            return
        for conn, t, raw in reader.messages(connections=conns, start=start_ns, stop=stop_ns):
            yield BagMessage(conn.topic, conn.msgtype, t, reader.deserialize(raw, conn.msgtype))
