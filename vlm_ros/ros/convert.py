"""Conversions between ROS messages and core types: the one place that knows both.

Message classes come in as arguments or from the generated `vlm_ros.msg` module, so every function here can be
tested by building messages by hand.
"""

from __future__ import annotations

import math

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Vector3
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from vlm_ros.core.requests import QueryArgs
from vlm_ros.core.types import Answer, Box, GeometryMethod, Mask, Shape3D, Target, Timings
from vlm_ros.msg import GroundedTarget, QueryTimings, TrackedTarget
from vlm_ros.tracking import TrackedTarget as Track
from vlm_ros.tracking import TrackState


def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def make_header(stamp_ns: int, frame_id: str) -> Header:
    return Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id)


def _finite(values) -> bool:
    return all(math.isfinite(float(v)) for v in values)


def mask_to_msg(mask: Mask) -> tuple[Image, int, int]:
    """(mono8 Image, x offset, y offset) of a mask (GroundedTarget.msg documents the form)."""
    h, w = mask.data.shape
    data = mask.data.astype(np.uint8) * 255  # (h, w)
    return Image(height=h, width=w, encoding="mono8", is_bigendian=0, step=w, data=data.tobytes()), mask.x0, mask.y0


def mask_from_msg(msg: GroundedTarget) -> Mask | None:
    """The target's mask, or None when it has none (empty image) or it is malformed."""
    image, h, w = msg.mask, msg.mask.height, msg.mask.width
    if h == 0 or w == 0 or image.encoding != "mono8" or image.step < w or len(image.data) < image.step * h:
        return None
    data = np.frombuffer(bytes(image.data), np.uint8)[: image.step * h].reshape(h, image.step)[:, :w] > 127
    return Mask(int(msg.mask_x_offset), int(msg.mask_y_offset), data, msg.mask_source)


def target_to_msg(target: Target) -> GroundedTarget:
    """A GroundedTarget; 3-D fields are left invalid (zeros) unless every one of them is finite."""
    msg = GroundedTarget(label=target.label, score=float(target.score))
    if target.box is not None:
        box = target.box
        msg.kind = GroundedTarget.KIND_BOX
        msg.x_min, msg.y_min, msg.x_max, msg.y_max = (float(box.x_min), float(box.y_min), float(box.x_max),
                                                      float(box.y_max))
        msg.point_x, msg.point_y = (float(v) for v in (target.point or box.center))
    else:
        msg.kind = GroundedTarget.KIND_POINT
        msg.point_x, msg.point_y = (float(v) for v in target.point)
    if target.mask is not None and target.mask.data.size:
        msg.mask, msg.mask_x_offset, msg.mask_y_offset = mask_to_msg(target.mask)
        msg.mask_source = target.mask.source
    shape = target.shape
    if target.position is not None and _finite(target.position) and (
            shape is None or _finite(shape.extent_min + shape.extent_max + (shape.valid_fraction,))):
        msg.position_valid = True
        msg.position = Point(x=float(target.position[0]), y=float(target.position[1]), z=float(target.position[2]))
        if shape is not None:
            lo, hi = shape.extent_min, shape.extent_max
            msg.extent_center = Point(x=(lo[0] + hi[0]) / 2, y=(lo[1] + hi[1]) / 2, z=(lo[2] + hi[2]) / 2)
            msg.extent_size = Vector3(x=hi[0] - lo[0], y=hi[1] - lo[1], z=hi[2] - lo[2])
            msg.valid_points = int(shape.valid_points)
            msg.valid_fraction = float(shape.valid_fraction)
            msg.geometry_method = shape.method.value
    return msg


def target_from_msg(msg: GroundedTarget) -> Target:
    """The core Target of a GroundedTarget (for clients: the regression harness, tests)."""
    box = Box(msg.x_min, msg.y_min, msg.x_max, msg.y_max) if msg.kind == GroundedTarget.KIND_BOX else None
    point = (msg.point_x, msg.point_y) if box is None else None
    position = shape = None
    if msg.position_valid:
        position = (msg.position.x, msg.position.y, msg.position.z)
        if msg.geometry_method in {m.value for m in GeometryMethod}:
            c, size = msg.extent_center, msg.extent_size
            shape = Shape3D(extent_min=(c.x - size.x / 2, c.y - size.y / 2, c.z - size.z / 2),
                            extent_max=(c.x + size.x / 2, c.y + size.y / 2, c.z + size.z / 2),
                            valid_points=int(msg.valid_points), valid_fraction=float(msg.valid_fraction),
                            method=GeometryMethod(msg.geometry_method))
    return Target(label=msg.label, box=box, score=msg.score, position=position, point=point,
                  mask=mask_from_msg(msg), shape=shape)


def timings_to_msg(timings: Timings, generated_tokens: int) -> QueryTimings:
    return QueryTimings(
        queue_wait=timings.queue_wait,
        preprocess=timings.preprocess,
        vision_encode=timings.vision_encode,
        prefill=timings.prefill,
        decode=timings.decode,
        ground=timings.ground,
        segment=timings.segment,
        total=timings.total,
        generated_tokens=int(generated_tokens),
    )


def query_from_msg(msg) -> QueryArgs:
    """The fields of a Query service request or action goal (they share them), copied: the message is not changed.

    Validation, normalisation and defaults are the scheduler's (vlm_ros.core.requests.build_request).
    """
    return QueryArgs(instruction=str(msg.instruction), camera=str(msg.camera), ground=bool(msg.ground),
                     timeout_s=float(msg.timeout_s), max_new_tokens=int(msg.max_new_tokens))


def fill_result(result, answer: Answer, header: Header | None, camera: str):
    """Fill a Query service response or action result (they share their fields) from an Answer."""
    result.status = int(answer.status)
    result.message = answer.message
    result.answer = answer.text
    result.targets = [target_to_msg(t) for t in answer.targets]
    if header is not None:
        result.header = header
    result.camera = camera
    result.timings = timings_to_msg(answer.timings, answer.generated_tokens)
    return result


def track_to_msg(track: Track) -> TrackedTarget:
    """A TrackedTarget message of one track (its target part as target_to_msg makes it)."""
    target = Target(label=track.label, box=track.box, score=min(max(float(track.confidence), 0.0), 1.0),
                    position=track.position, mask=track.mask, shape=track.shape)
    return TrackedTarget(id=int(track.track_id), state=track.state.value, reason=track.reason,
                         age_s=float(track.age_s), confidence=float(track.confidence), target=target_to_msg(target))


def track_from_msg(msg: TrackedTarget, stamp_ns: int = 0) -> Track:
    """The core track of a TrackedTarget message (for clients: the regression harness, tests)."""
    target = target_from_msg(msg.target)
    return Track(int(msg.id), target.label, TrackState(msg.state), msg.reason, target.box, float(msg.confidence),
                 stamp_ns, float(msg.age_s), target.position, target.shape, target.mask)
