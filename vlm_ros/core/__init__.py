"""ROS-free core types and helpers."""

from vlm_ros.core.types import (
    Answer,
    Box,
    CameraIntrinsics,
    Frame,
    Request,
    Status,
    Target,
    Task,
    Timings,
)

__all__ = ["Answer", "Box", "CameraIntrinsics", "Frame", "Request", "Status", "Target", "Task", "Timings"]
