"""TrackSession without ROS: newest frames only, one grounding in flight through a worker thread, the camera
stopping, and the goal checks. The frames are a rendered scene moved by whole pixels; the "model" is a worker
thread answering with the true boxes after a delay (the session must not care who grounds)."""

import queue
import threading
import time

import numpy as np

from vlm_ros.core.geometry import target_geometry
from vlm_ros.core.types import Answer, Box, Frame, Status, Target
from vlm_ros.embedded.scenes import render_scene
from vlm_ros.tracking import TrackerSettings, TrackState
from vlm_ros.tracking.session import TrackGoal, TrackSession, check_goal

NS = 1_000_000_000


class FakeWorld:
    """A camera whose newest frame moves right by 2 px every 1/30 s of its own time, and a worker answering grounding
    jobs with the true boxes of the frame it took, `delay_s` later."""

    def __init__(self, delay_s: float = 0.05):
        self.scene = render_scene(3, n_objects=2)
        self.index = 0
        self.lock = threading.Condition()  # the camera notifies a new frame
        self.jobs: queue.Queue = queue.Queue()
        self.delay_s = delay_s
        self.grounded = 0
        self.max_in_flight = 0
        self.in_flight = 0
        self.published: list = []
        self.worker = threading.Thread(target=self._work, daemon=True)
        self.worker.start()

    def frame(self, index: int) -> Frame:
        dx = 2 * index
        return Frame(np.roll(self.scene.image, dx, axis=1), stamp_ns=int(index * NS / 30), camera="front",
                     intrinsics=self.scene.intrinsics, depth=np.roll(self.scene.depth, dx, axis=1))

    def wait_for_frame(self, after_stamp, timeout_s):
        with self.lock:
            self.lock.wait_for(lambda: int(self.index * NS / 30) != after_stamp, timeout_s)
            return int(self.index * NS / 30)

    def snapshot(self):
        with self.lock:
            return self.frame(self.index), Status.OK, ""

    def ground(self, request, on_done) -> bool:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.jobs.put(on_done)
        return True

    def _work(self):
        while True:
            on_done = self.jobs.get()
            frame, _, _ = self.snapshot()
            dx = 2 * round(frame.stamp_ns * 30 / NS)
            targets = []
            for o in self.scene.objects:
                box = Box(o.box.x_min + dx, o.box.y_min, o.box.x_max + dx, o.box.y_max)
                g = target_geometry(frame.depth, frame.intrinsics, (frame.width, frame.height), box=box)
                targets.append(Target(o.label, box, position=g.position, mask=g.mask, shape=g.shape))
            time.sleep(self.delay_s)
            self.in_flight -= 1
            self.grounded += 1

            class Job:
                answer, frame = Answer(Status.OK, targets=targets), None

            Job.frame = frame
            on_done(Job)

    def publish(self, tracks, frame):
        self.published.append((frame.stamp_ns, tracks))


def run_session(world: FakeWorld, frames: int, then_silent_s: float = 0.0, camera_timeout_s: float = 0.3,
                update_rate_hz: float = 0.0):
    session = TrackSession(TrackGoal("detect all objects", "front", update_rate_hz, 0.3, 5), TrackerSettings(
        reground_period_s=0.3), wait_for_frame=world.wait_for_frame, snapshot=world.snapshot, ground=world.ground,
        publish=world.publish, camera_timeout_s=camera_timeout_s)
    stop = threading.Event()

    def camera():
        for i in range(1, frames):
            time.sleep(1 / 30)
            with world.lock:
                world.index = i
                world.lock.notify_all()
        time.sleep(then_silent_s)
        stop.set()

    threading.Thread(target=camera, daemon=True).start()
    status, message = session.run(lambda: not stop.is_set())
    return session, status, message


def test_session_follows_the_newest_frames_with_one_grounding_in_flight_and_stable_ids():
    world = FakeWorld(delay_s=0.05)
    session, status, message = run_session(world, frames=40)
    assert status == Status.OK and "updates" in message
    stamps = [s for s, _ in world.published]
    assert stamps == sorted(set(stamps))  # each frame at most once, in order (newest only: some may be skipped)
    assert world.max_in_flight == 1 and world.grounded >= 2
    ids = {t.label: set() for _, tracks in world.published for t in tracks}
    for _, tracks in world.published:
        for t in tracks:
            ids[t.label].add(t.track_id)
    assert len(ids) == 2 and all(len(v) == 1 for v in ids.values()), ids
    last_stamp, last = world.published[-1]
    dx = 2 * round(last_stamp * 30 / NS)
    for t, o in zip(sorted(last, key=lambda t: t.track_id), world.scene.objects, strict=True):
        assert t.state == TrackState.TRACKING
        assert t.box.iou(Box(o.box.x_min + dx, o.box.y_min, o.box.x_max + dx, o.box.y_max)) > 0.8


def test_a_camera_that_stops_loses_every_track_once_with_the_reason():
    world = FakeWorld(delay_s=0.01)
    run_session(world, frames=20, then_silent_s=0.8, camera_timeout_s=0.3)
    _, last = world.published[-1]
    assert last and all(t.state == TrackState.LOST and t.reason.startswith("camera stopped") for t in last)
    assert sum(bool(tracks) and all(t.state == TrackState.LOST for t in tracks) for _, tracks in world.published) == 1


def test_a_slow_update_rate_is_not_taken_for_a_stopped_camera():
    world = FakeWorld(delay_s=0.01)
    session, _, _ = run_session(world, frames=40, camera_timeout_s=0.3, update_rate_hz=2.0)  # 1.3 s, a 0.5 s period
    assert 2 <= session.updates <= 4
    assert world.published and not any(t.reason.startswith("camera stopped") for _, ts in world.published for t in ts)


def test_goal_checks_name_the_field():
    assert check_goal(0.0, 0.0, 0) == ""
    assert "update_rate_hz" in check_goal(float("nan"), 1.0, 3)
    assert "reground_period_s" in check_goal(30.0, 0.01, 3)
    assert "max_targets" in check_goal(30.0, 1.0, 999)
