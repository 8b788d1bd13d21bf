"""Conversions between ROS messages and core types: the one place that knows both.

Message classes come in as arguments or from the generated `vlm_ros.msg` module, so every function here can be
tested by building messages by hand.
"""

from __future__ import annotations

from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point
from std_msgs.msg import Header

from vlm_ros.core.requests import QueryArgs
from vlm_ros.core.types import Answer, Target, Timings
from vlm_ros.msg import GroundedTarget, QueryTimings


def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def make_header(stamp_ns: int, frame_id: str) -> Header:
    return Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id)


def target_to_msg(target: Target) -> GroundedTarget:
    msg = GroundedTarget(
        label=target.label,
        score=float(target.score),
        x_min=float(target.box.x_min),
        y_min=float(target.box.y_min),
        x_max=float(target.box.x_max),
        y_max=float(target.box.y_max),
    )
    if target.position is not None:
        msg.position_valid = True
        msg.position = Point(x=float(target.position[0]), y=float(target.position[1]), z=float(target.position[2]))
    return msg


def timings_to_msg(timings: Timings, generated_tokens: int) -> QueryTimings:
    return QueryTimings(
        queue_wait=timings.queue_wait,
        preprocess=timings.preprocess,
        vision_encode=timings.vision_encode,
        prefill=timings.prefill,
        decode=timings.decode,
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
