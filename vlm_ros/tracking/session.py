"""One Track goal at run time: newest camera frames -> Tracker -> published tracks, re-grounded through the model
worker. No ROS: the node passes in how to read frames, queue a grounding and publish.

The session runs in its caller's thread (the node: the action's execute callback, never a camera callback). It
sleeps until the camera's next frame arrives (no polling), takes the newest frame only (frames that came in
meanwhile are skipped: no backlog), at most `update_rate_hz` times a second, and moves the tracks to it.
Groundings go through the scheduler's queue as background jobs, one at a time per session, behind any waiting
query: queries and tracks share the one model worker in arrival order. Their answers come back on the worker and
are merged here, in the session's thread. A camera that stops (no new frame for `camera_timeout_s`) makes every
track lost with that reason; the session goes on and picks up when frames come again. `run` returns when the
caller cancels or the node stops serving.
"""

from __future__ import annotations

import math
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass

from vlm_ros.core.types import Frame, Request, Status, Task
from vlm_ros.scheduler import WAIT_MARGIN_S
from vlm_ros.tracking.tracker import TrackedTarget, Tracker, TrackerSettings

WAIT_S = 0.05  # longest wait for a new frame before the session looks at cancel, groundings and the camera's silence

DEFAULT_INSTRUCTION = "detect all objects"
MAX_TARGETS_LIMIT = 20  # most targets one goal may ask to follow


@dataclass(frozen=True)
class TrackGoal:
    """A Track goal after validation. update_rate_hz 0 = every camera frame."""

    instruction: str
    camera: str
    update_rate_hz: float
    reground_period_s: float
    max_targets: int


def check_goal(update_rate_hz: float, reground_period_s: float, max_targets: int) -> str:
    """Why a Track goal's numbers are refused, or "" (0 = the node's default for each)."""
    if not (math.isfinite(update_rate_hz) and 0.0 <= update_rate_hz <= 1000.0):
        return f"update_rate_hz must be 0 (every camera frame) or in (0, 1000], got {update_rate_hz}"
    if not (math.isfinite(reground_period_s) and (reground_period_s == 0.0 or 0.1 <= reground_period_s <= 3600.0)):
        return f"reground_period_s must be 0 (the default) or in [0.1, 3600], got {reground_period_s}"
    if not 0 <= max_targets <= MAX_TARGETS_LIMIT:
        return f"max_targets must be 0 (the default) or in [1, {MAX_TARGETS_LIMIT}], got {max_targets}"
    return ""


class TrackSession:
    """Follows what `goal.instruction` names on `goal.camera` until cancelled.

    wait_for_frame(after_stamp, timeout_s): the camera's newest frame stamp once it differs from after_stamp, or
    after timeout_s (None = no frame yet); snapshot(): the newest frame with its depth and
    intrinsics, or (None, status, why); ground(request, on_done): queue a grounding job on the model worker, False
    when it cannot be queued now (on_done(job) gets job.answer and job.frame, on the worker); publish(tracks,
    frame): the tracks as of `frame`, after every update.
    """

    def __init__(self, goal: TrackGoal, settings: TrackerSettings, *,
                 wait_for_frame: Callable[[int | None, float], int | None],
                 snapshot: Callable[[], tuple[Frame | None, Status, str]],
                 ground: Callable[[Request, Callable], bool],
                 publish: Callable[[list[TrackedTarget], Frame], None], camera_timeout_s: float = 1.0,
                 grounding_timeout_s: float = 10.0):
        self.goal = goal
        self.tracker = Tracker(settings)
        self.updates = 0
        self.groundings = 0
        self._wait_for_frame, self._snapshot, self._ground, self._publish = wait_for_frame, snapshot, ground, publish
        self._camera_timeout_s = camera_timeout_s
        self._request = Request(Task.GROUND, goal.instruction or DEFAULT_INSTRUCTION, max_new_tokens=128,
                                timeout_s=grounding_timeout_s)
        self._answers: queue.SimpleQueue = queue.SimpleQueue()  # (answer, frame) from the worker
        self._in_flight_since: float | None = None  # time.monotonic() the pending grounding was queued
        self._grounding_timeout_s = grounding_timeout_s
        self._last_frame: Frame | None = None

    def run(self, keep_going: Callable[[], bool]) -> tuple[Status, str]:
        """Track until keep_going() is False; returns the status and message of the end."""
        period = 1.0 / self.goal.update_rate_hz if self.goal.update_rate_hz > 0 else 0.0
        last_stamp, last_seen, last_update, last_new_frame = None, None, 0.0, time.monotonic()
        camera_stopped = False
        while keep_going():
            self._merge_groundings()
            stamp = self._wait_for_frame(last_stamp, WAIT_S)
            now = time.monotonic()
            if stamp != last_seen:
                last_seen, last_new_frame = stamp, now
            if stamp is None or stamp == last_stamp:
                if not camera_stopped and self._last_frame is not None and \
                        now - last_new_frame > self._camera_timeout_s:
                    camera_stopped = True
                    self.tracker.camera_stopped(now - last_new_frame)
                    self._publish(self.tracker.snapshot(), self._last_frame)
                continue
            if now - last_update < period:
                time.sleep(min(period - (now - last_update), WAIT_S))
                continue
            frame, _, _ = self._snapshot()  # None: no frame, or too old (max_frame_age_s)
            if frame is None or frame.stamp_ns == last_stamp:
                time.sleep(WAIT_S)
                continue
            last_stamp, last_update, camera_stopped = frame.stamp_ns, now, False
            self._update(frame)
        return Status.OK, f"track ended after {self.updates} updates and {self.groundings} groundings"

    def _update(self, frame: Frame) -> None:
        tracks = self.tracker.update(frame)
        if tracks is None:  # late frame: nothing moved
            return
        self._last_frame = frame
        self.updates += 1
        self._publish(tracks, frame)
        if self._in_flight_since is not None and \
                time.monotonic() - self._in_flight_since > self._grounding_timeout_s + WAIT_MARGIN_S:
            self._in_flight_since = None  # its job was dropped unanswered (the worker stopped): ask again
        if self._in_flight_since is None and self.tracker.needs_grounding(frame.stamp_ns):
            if self._ground(self._request, self._on_grounded):
                self._in_flight_since = time.monotonic()
                self.tracker.grounding_started(frame.stamp_ns)

    def _on_grounded(self, job) -> None:
        """On the model worker: hand the answer to the session's thread."""
        self._answers.put((job.answer, job.frame))

    def _merge_groundings(self) -> None:
        while True:
            try:
                answer, frame = self._answers.get_nowait()
            except queue.Empty:
                return
            self._in_flight_since = None
            self.groundings += 1
            if answer is not None and answer.status == Status.OK and frame is not None:
                self.tracker.apply_grounding(answer.targets, frame)
