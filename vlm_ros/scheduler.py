"""The query scheduler: refusals, a bounded queue, deadlines and the one model worker thread. No ROS.

A query that cannot run is answered at once: NOT_READY (not active, no model), INVALID_ARGUMENT (instruction,
limits, unknown camera), NO_FRAME, or BUSY when the queue is full. Otherwise it waits in the queue for the worker,
which takes the camera's frame, runs the Pipeline on it and hands the finished job on to be published. The caller
waits at most its timeout plus WAIT_MARGIN_S, even when the model is stuck (then TIMEOUT): every query gets an
Answer. What is ROS-specific (the lifecycle state, taking a frame, publishing) comes in as callables.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vlm_ros.core.frames import CameraBuffer
from vlm_ros.core.requests import QueryArgs, QuerySettings, build_request
from vlm_ros.core.types import Answer, Frame, Request, Status

if TYPE_CHECKING:
    from vlm_ros.pipeline import Pipeline

WAIT_MARGIN_S = 2.0  # a caller waits at most its timeout plus this, even if the model is stuck
TextCallback = Callable[[str, int], None]  # (text so far, tokens so far)
Snapshot = Callable[[str], tuple[Frame | None, Status, str]]  # camera -> (frame or None, status, message)


@dataclass
class Job:
    """One query on its way through the queue and the worker."""

    request: Request
    camera: str
    deadline: float  # time.monotonic()
    on_text: TextCallback | None = None
    on_done: Callable[[Job], None] | None = None  # on the worker, after publishing
    enqueued: float = field(default_factory=time.monotonic)
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    answer: Answer | None = None
    frame: Frame | None = None  # the frame the answer is about

    def finish(self, answer: Answer, frame: Frame | None = None) -> None:
        self.answer, self.frame = answer, frame
        self.done.set()


@dataclass(frozen=True)
class Outcome:
    """What a caller gets back: the answer, the camera asked, and the frame answered from (None if none was)."""

    answer: Answer
    camera: str
    frame: Frame | None = None


class Scheduler:
    """Bounded queue + one worker thread running a Pipeline; every method is safe to call from any thread.

    cameras: the camera buffers (a query names one of them; one with no frame yet gets NO_FRAME at once).
    snapshot(camera): the frame to answer from, taken on the worker when a job starts (age-checked by the caller).
    state(): the lifecycle state's name; queries run only while it is "active".
    publish(job): on the worker, after a job answered from a frame has been finished.
    model_ready(pipeline): on the worker, after the warm-up and before the first real query.
    """

    def __init__(self, queue_size: int, cameras: Mapping[str, CameraBuffer], snapshot: Snapshot,
                 state: Callable[[], str], publish: Callable[[Job], None] = lambda job: None,
                 model_ready: Callable[[Pipeline], None] = lambda pipeline: None,
                 log: logging.Logger | None = None, wait_margin_s: float = WAIT_MARGIN_S):
        self.cameras = cameras
        self.wait_margin_s = wait_margin_s
        self._snapshot, self._state, self._publish, self._model_ready = snapshot, state, publish, model_ready
        self._log = log or logging.getLogger(__name__)
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()  # admission against stop(): no job is queued after the queue is drained
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._running: Job | None = None
        self.pipeline: Pipeline | None = None
        self.counters = {"served": 0, "failed": 0, "busy": 0, "invalid": 0}
        self.last_timings = None  # Timings of the last query the model answered
        self.warmup_s: float | None = None  # the last warm-up query's time
        self.cpu_threads: int | None = None  # torch's intra-op threads, as the worker set them

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def running(self) -> bool:
        return self._running is not None

    # --- the worker ---------------------------------------------------------------------------------------
    def start(self, pipeline: Pipeline, cpu_threads: int = 0, warmup_size: tuple[int, int] | None = None) -> None:
        """Serve queries with `pipeline` on a new worker thread.

        cpu_threads: torch's intra-op threads (process-wide), set on the worker; 0 = leave torch's default.
        warmup_size: (height, width) of a blank frame for one short query before any real one; None = no warm-up.
        """
        if self._worker is not None:
            raise RuntimeError("the scheduler is already running; stop() it first")
        self.pipeline = pipeline
        self._stop = threading.Event()  # a worker that outlived its stop() keeps its own (set) event
        self._worker = threading.Thread(target=self._work, args=(pipeline, self._stop, cpu_threads, warmup_size),
                                        name="vlm_worker", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        """Stop the worker: the running query is cancelled (it returns its partial answer); queued ones: NOT_READY."""
        self._stop.set()
        running = self._running
        if running is not None:
            running.cancel.set()
        if self._worker is not None:
            self._worker.join(timeout=30.0)
            self._worker = None
        with self._lock:
            self.pipeline = None
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                job.finish(Answer(Status.NOT_READY, "the model was unloaded (cleanup/shutdown) while the query waited"))

    def _work(self, pipeline: Pipeline, stop: threading.Event, cpu_threads: int,
              warmup_size: tuple[int, int] | None) -> None:
        try:
            import torch

            if cpu_threads > 0:  # process-wide; set here, where the model runs
                torch.set_num_threads(cpu_threads)
            self.cpu_threads = torch.get_num_threads()
            if warmup_size is not None:
                self._warm_up(pipeline, *warmup_size)
            self._model_ready(pipeline)
        except Exception as exc:  # noqa: BLE001 -- the worker still serves: queries report their own failures
            self._log.error(f"worker start-up failed: {type(exc).__name__}: {exc}")
        while not stop.is_set():
            try:
                job = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            self._running = job
            try:
                self._serve(job, pipeline)
                if job.on_done is not None:
                    job.on_done(job)
            except Exception as exc:  # noqa: BLE001 -- never let the worker die; the caller gets a status
                self._log.error(f"query failed: {type(exc).__name__}: {exc}")
                if not job.done.is_set():
                    job.finish(Answer(Status.MODEL_ERROR, f"internal error: {type(exc).__name__}: {exc}"[:300]))
            finally:
                self._running = None

    def _warm_up(self, pipeline: Pipeline, height: int, width: int) -> None:
        """The first-use work (buffers, CUDA graphs) on this thread, before the first real query; queries that
        arrive meanwhile wait in the queue under their deadlines."""
        answer = pipeline.warm_up(height, width)
        self.warmup_s = answer.timings.total
        if answer.status == Status.OK:
            self._log.info(f"warm-up query: {self.warmup_s * 1e3:.0f} ms")
        else:
            self._log.warning(f"warm-up query failed ({answer.status.name}): {answer.message}")

    def _serve(self, job: Job, pipeline: Pipeline) -> None:
        queue_wait = time.monotonic() - job.enqueued
        if job.cancel.is_set():
            return job.finish(Answer(Status.TIMEOUT, "abandoned by the caller before it started"))
        state = self._state()
        if state != "active":
            return job.finish(Answer(Status.NOT_READY, f"the node became {state} while the query waited"))
        frame, status, message = self._snapshot(job.camera)
        if frame is None:
            return job.finish(Answer(status, message))
        answer = pipeline.answer(frame, job.request, deadline=job.deadline, on_text=job.on_text, cancel=job.cancel,
                                 queue_wait=queue_wait)
        job.finish(answer, frame)
        self.counters["served" if answer.status in (Status.OK, Status.TIMEOUT) else "failed"] += 1
        self.last_timings = answer.timings
        if answer.status == Status.MODEL_ERROR:
            self._log.error(f"query failed: {answer.message}")
        self._publish(job)

    # --- callers ------------------------------------------------------------------------------------------
    def submit(self, args: QueryArgs, settings: QuerySettings, on_text: TextCallback | None = None,
               cancelled: Callable[[], bool] = lambda: False) -> Outcome:
        """Validate, queue and wait for one query. Always returns, within its timeout plus wait_margin_s.

        on_text(text so far, tokens so far) streams the answer (on the worker); cancelled() is polled while waiting.
        """
        camera = args.camera or settings.default_camera
        job = self._admit(args, settings, camera, on_text)
        if isinstance(job, Answer):
            return Outcome(job, camera)
        wait_until = job.deadline + self.wait_margin_s
        while not job.done.wait(0.05):
            if cancelled():
                job.cancel.set()
            if time.monotonic() > wait_until:
                job.cancel.set()
                return Outcome(Answer(Status.TIMEOUT, "no answer within the timeout (the model is still busy)"), camera)
        return Outcome(job.answer, camera, job.frame)

    def enqueue_background(self, request: Request, camera: str, on_done: Callable[[Job], None]) -> bool:
        """Queue a job nobody waits for (the periodic description); on_done(job) runs on the worker when it is
        answered. False when not active or the queue is full: queries come first, the next period tries again."""
        with self._lock:
            if self._state() != "active" or self.pipeline is None:
                return False
            try:
                self._queue.put_nowait(Job(request, camera, time.monotonic() + request.timeout_s, on_done=on_done))
            except queue.Full:
                return False
        return True

    def _admit(self, args: QueryArgs, settings: QuerySettings, camera: str,
               on_text: TextCallback | None) -> Job | Answer:
        """The queued Job, or the Answer that refuses the query at once."""
        with self._lock:
            state = self._state()
            if state != "active":
                return Answer(Status.NOT_READY, f"node is {state}; queries are answered only while it is active "
                                                "(configure and activate it)")
            if self.pipeline is None:
                return Answer(Status.NOT_READY, "no model is loaded (configure the node)")
            request, error = build_request(args, settings)
            if not error and camera not in self.cameras:
                error = f"unknown camera '{camera}'; cameras: {', '.join(self.cameras)}"
            if error:
                self.counters["invalid"] += 1
                return Answer(Status.INVALID_ARGUMENT, error)
            if self.cameras[camera].newest_stamp_ns() is None:
                return Answer(Status.NO_FRAME, f"no frame received yet from camera '{camera}'")
            job = Job(request, camera, time.monotonic() + request.timeout_s, on_text=on_text)
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                self.counters["busy"] += 1
                return Answer(Status.BUSY, f"{self._queue.maxsize} queries are waiting (queue_size); try again")
            return job
