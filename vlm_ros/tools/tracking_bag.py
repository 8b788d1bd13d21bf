"""Write a rosbag2 of a moving scene (vlm_ros.embedded.motion) with its per-frame truth, and read the truth back.

    python -m vlm_ros.tools.tracking_bag OUT_DIR [--seconds 6] [--fps 30] [--width 640 --height 480]
        [--depth-scale 4] [--jpeg-quality 80]

Per frame, on the default topics of vlm_ros.tools.bags: JPEG CompressedImage, CameraInfo, 16UC1 depth (at
1/depth_scale of the colour resolution: registered, same field of view; its own CameraInfo) and /clock. Beside
the bag, `tracking_truth.json` holds every frame's objects by stable id: label, visible box (null when not visible),
visible fraction, the visible surface's 3-D centroid and the object's centre (camera optical frame, metres), as
the renderer knows them; :func:`load_tracking_truth` reads it. The regression harness scores a Track goal on
such a bag (`python -m vlm_ros.tools.regression BAG --start-node --track`).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from rosbags.rosbag2 import Writer

from vlm_ros.core.images import encode_depth
from vlm_ros.core.types import Box, CameraIntrinsics
from vlm_ros.embedded.motion import MotionRenderer, ObjectState, default_script
from vlm_ros.tools.bags import (
    _STORAGES,
    BAG_VERSION,
    DEFAULT_START_NS,
    DEFAULT_TOPICS,
    RECORDED_QOS,
    _camera_info,
    _compressed,
    _raw_image,
    _time_msg,
    typestore,
)

TRUTH_FILE = "tracking_truth.json"
TRUTH_FORMAT = "vlm_ros.tracking_truth/1"


@dataclass(frozen=True)
class TrackingTruth:
    camera: str
    width: int
    height: int
    fps: float
    topics: dict[str, str]
    frames: tuple[tuple[int, tuple[ObjectState, ...]], ...]  # (stamp_ns, objects) per frame, in time order


def _object_json(o: ObjectState) -> dict:
    return {"id": o.object_id, "label": o.label,
            "box": None if o.box is None else [o.box.x_min, o.box.y_min, o.box.x_max, o.box.y_max],
            "visible_fraction": o.visible_fraction,
            "surface_centroid": None if o.surface_centroid is None else list(o.surface_centroid),
            "object_center": list(o.object_center)}


def _object_from_json(d: dict) -> ObjectState:
    centroid = d["surface_centroid"]
    return ObjectState(int(d["id"]), d["label"], None if d["box"] is None else Box(*d["box"]), None,
                       float(d["visible_fraction"]), None if centroid is None else tuple(centroid),
                       tuple(d["object_center"]))


def write_tracking_bag(path: str | Path, *, seconds: float = 6.0, fps: float = 30.0, width: int = 640,
                       height: int = 480, depth_scale: int = 4, jpeg_quality: int = 80, camera: str = "front",
                       start_ns: int = DEFAULT_START_NS, overwrite: bool = False) -> Path:
    """Write the default moving scene (`seconds` long, times scaled) as a bag with its truth; returns its folder."""
    if not (math.isfinite(seconds) and seconds > 0 and math.isfinite(fps) and fps > 0):
        raise ValueError(f"seconds and fps must be positive, got {seconds}, {fps}")
    if depth_scale < 1 or width % depth_scale or height % depth_scale:
        raise ValueError(f"depth_scale must divide {width}x{height}, got {depth_scale}")
    path = Path(path)
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"{path} exists (pass overwrite=True to replace a bag)")
        if not (path / "metadata.yaml").exists():
            raise FileExistsError(f"{path} is not a bag; not removing it")
        shutil.rmtree(path)
    renderer = MotionRenderer(default_script(duration_s=seconds), width, height)
    roles = {r: DEFAULT_TOPICS[r] for r in ("compressed", "camera_info", "depth", "depth_info", "clock")}
    types = {"compressed": "sensor_msgs/msg/CompressedImage", "camera_info": "sensor_msgs/msg/CameraInfo",
             "depth": "sensor_msgs/msg/Image", "depth_info": "sensor_msgs/msg/CameraInfo",
             "clock": "rosgraph_msgs/msg/Clock"}
    store = typestore()
    color_frame, depth_frame = f"{camera}_color_optical_frame", f"{camera}_depth_optical_frame"
    k = renderer.intrinsics
    dk = CameraIntrinsics(k.fx / depth_scale, k.fy / depth_scale, (k.cx + 0.5) / depth_scale - 0.5,
                          (k.cy + 0.5) / depth_scale - 0.5)
    dw, dh = width // depth_scale, height // depth_scale
    frames = []
    writer = Writer(path, version=BAG_VERSION, storage_plugin=_STORAGES["mcap"])
    writer.set_custom_data("vlm_ros.tracking_truth", TRUTH_FILE)
    with writer:
        conns = {r: writer.add_connection(t, types[r], typestore=store, offered_qos_profiles=[RECORDED_QOS])
                 for r, t in roles.items()}

        def put(role: str, ns: int, msg) -> None:
            writer.write(conns[role], ns, store.serialize_cdr(msg, types[role]))

        for i in range(int(round(seconds * fps)) + 1):
            t = start_ns + int(round(i * 1e9 / fps))
            rendered = renderer.render(i / fps, i)
            put("clock", t, store.types["rosgraph_msgs/msg/Clock"](clock=_time_msg(t)))
            put("camera_info", t, _camera_info(t, color_frame, width, height, k))
            put("depth_info", t, _camera_info(t, depth_frame, dw, dh, dk))
            depth = recorded_depth(rendered.depth, depth_scale)  # (dh, dw)
            data, step = encode_depth(depth, "16UC1")
            put("depth", t, _raw_image(t, depth_frame, data, step, dw, dh, "16UC1"))
            put("compressed", t, _compressed(t, color_frame, rendered.image, "rgb8", "jpeg", jpeg_quality))
            frames.append({"stamp_ns": t, "objects": [_object_json(o) for o in rendered.objects]})
    truth = {"format": TRUTH_FORMAT, "camera": camera, "width": width, "height": height, "fps": fps,
             "topics": roles, "frames": frames}
    (path / TRUTH_FILE).write_text(json.dumps(truth) + "\n", encoding="utf-8")
    return path


def recorded_depth(depth: np.ndarray, depth_scale: int) -> np.ndarray:
    """(H, W) metres -> (H / depth_scale, W / depth_scale), nearest (no depths mixed across an edge)."""
    height, width = depth.shape
    return cv2.resize(depth, (width // depth_scale, height // depth_scale), interpolation=cv2.INTER_NEAREST)


def load_tracking_truth(bag: str | Path) -> TrackingTruth:
    d = json.loads((Path(bag) / TRUTH_FILE).read_text(encoding="utf-8"))
    if d.get("format") != TRUTH_FORMAT:
        raise ValueError(f"{bag}/{TRUTH_FILE}: format {d.get('format')!r}, expected {TRUTH_FORMAT!r}")
    frames = tuple((int(f["stamp_ns"]), tuple(_object_from_json(o) for o in f["objects"])) for f in d["frames"])
    return TrackingTruth(d["camera"], int(d["width"]), int(d["height"]), float(d["fps"]), dict(d["topics"]), frames)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--depth-scale", type=int, default=4)
    parser.add_argument("--jpeg-quality", type=int, default=80)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    path = write_tracking_bag(args.out, seconds=args.seconds, fps=args.fps, width=args.width, height=args.height,
                              depth_scale=args.depth_scale, jpeg_quality=args.jpeg_quality, overwrite=args.overwrite)
    size = sum(f.stat().st_size for f in path.iterdir())
    print(f"{path}: {size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
