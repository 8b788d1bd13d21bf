"""The query scheduler without ROS: refusals, the bounded queue, deadlines, cancel, stop and the worker's guard.

The pipeline is real (the embedded model on CPU). Its engine is the real TorchEngine behind a gate the test opens,
which stands for a model that is stuck until then; only the node's callables (state, snapshot, publish) are
simple stand-ins, around real camera buffers.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from vlm_ros.core import requests
from vlm_ros.core.frames import CameraBuffer
from vlm_ros.core.requests import QueryArgs, QuerySettings
from vlm_ros.core.types import Request, Status, Task
from vlm_ros.engine import TorchEngine
from vlm_ros.models.registry import load_adapter
from vlm_ros.pipeline import Pipeline
from vlm_ros.scheduler import WAIT_MARGIN_S, Scheduler

SETTINGS = QuerySettings(default_camera="front", default_timeout_s=30.0, max_new_tokens_limit=64,
                         max_instruction_bytes=64)


@pytest.fixture(scope="module")
def adapter():
    return load_adapter("", "auto", "cpu")  # the embedded model


@pytest.fixture(scope="module")
def engine(adapter):
    return TorchEngine(adapter)


class GatedEngine:
    """The real engine, entered only when the test opens the gate (or, if `honour_cancel`, the query is cancelled).

    Until then the model is stuck: it ignores the deadline, as a hung backend would.
    """

    def __init__(self, engine: TorchEngine, open_: bool = True, honour_cancel: bool = False):
        self.engine, self.honour_cancel = engine, honour_cancel
        self.gate, self.entered = threading.Event(), threading.Event()
        if open_:
            self.gate.set()

    def generate(self, inputs, max_new_tokens, *, deadline=None, on_text=None, cancel=None):
        self.entered.set()
        while not self.gate.wait(0.01):
            if self.honour_cancel and cancel is not None and cancel.is_set():
                break
        return self.engine.generate(inputs, max_new_tokens, deadline=deadline, on_text=on_text, cancel=cancel)


class Rig:
    """A scheduler with the node's side stood in: a lifecycle state, camera buffers, a list of published jobs."""

    def __init__(self, adapter, engine, queue_size=4, wait_margin_s=WAIT_MARGIN_S, model_ready=lambda p: None,
                 **gate):
        self.state = "active"
        self.cameras = {"front": CameraBuffer("front"), "rear": CameraBuffer("rear")}
        self.published: list = []
        self.snapshot_error: Exception | None = None
        self.publish_error: Exception | None = None
        self.engine = GatedEngine(engine, **gate)
        self.pipeline = Pipeline(adapter, self.engine)
        self.scheduler = Scheduler(queue_size, self.cameras, snapshot=self.snapshot, state=lambda: self.state,
                                   publish=self.publish, model_ready=model_ready, wait_margin_s=wait_margin_s)

    def snapshot(self, camera: str):
        if self.snapshot_error is not None:
            error, self.snapshot_error = self.snapshot_error, None
            raise error
        return self.cameras[camera].snapshot(time.time_ns(), int(60e9))

    def publish(self, job) -> None:
        self.published.append(job)
        if self.publish_error is not None:
            error, self.publish_error = self.publish_error, None
            raise error

    def put_frame(self, camera: str = "front", seed: int = 0) -> int:
        image = (np.random.default_rng(seed).random((48, 64, 3)) * 255).astype(np.uint8)
        stamp = time.time_ns()
        self.cameras[camera].put_image(image, stamp, f"{camera}_optical_frame")
        return stamp

    def submit_in_thread(self, args: QueryArgs, **kwargs) -> dict:
        """Submit from another thread (a caller that blocks); the dict gets 'outcome' when it returns."""
        box: dict = {}
        box["thread"] = threading.Thread(target=lambda: box.update(outcome=self.scheduler.submit(args, SETTINGS,
                                                                                                 **kwargs)),
                                         daemon=True)
        box["thread"].start()
        return box

    def submit_within(self, seconds: float, args: QueryArgs, **kwargs):
        """The outcome of a submit that must return within `seconds` (a scheduler that hangs fails the test)."""
        box = self.submit_in_thread(args, **kwargs)
        box["thread"].join(seconds)
        assert "outcome" in box, f"submit did not return within {seconds} s"
        return box["outcome"]


@pytest.fixture
def rig(adapter, engine):
    """rig(**options) -> a started Rig; every one is unstuck and stopped at teardown."""
    made: list[Rig] = []

    def make(start: bool = True, **options) -> Rig:
        r = Rig(adapter, engine, **options)
        if start:
            r.scheduler.start(r.pipeline)
        made.append(r)
        return r

    yield make
    for r in made:
        r.engine.gate.set()
        r.scheduler.stop()


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_a_query_is_answered_from_the_newest_frame_after_the_warm_up_on_the_worker(rig):
    events = []
    r = rig(start=False, model_ready=lambda pipeline: events.append(
        ("ready", threading.current_thread().name, r.scheduler.warmup_s is not None, torch.get_num_threads())))
    stamp = r.put_frame()
    threads_before = torch.get_num_threads()
    r.scheduler.start(r.pipeline, cpu_threads=1, warmup_size=(48, 64))
    try:
        outcome = r.scheduler.submit(QueryArgs("what is on the table?", max_new_tokens=8), SETTINGS)
    finally:
        torch.set_num_threads(threads_before)  # process-wide: give the other tests their threads back
    assert outcome.answer.status == Status.OK and outcome.answer.generated_tokens >= 1, outcome.answer
    assert outcome.camera == "front" and outcome.frame.stamp_ns == stamp
    assert events == [("ready", "vlm_worker", True, 1)]  # warm-up done, cpu_threads set, on the worker, first
    assert r.scheduler.cpu_threads == 1 and r.scheduler.warmup_s > 0
    assert [job.answer for job in r.published] == [outcome.answer]
    assert r.scheduler.counters == {"served": 1, "failed": 0, "busy": 0, "invalid": 0}


@pytest.mark.parametrize("state", ["unconfigured", "inactive", "configuring", "deactivating"])
def test_not_active_is_not_ready_and_names_the_lifecycle_state(rig, state):
    r = rig()
    r.put_frame()
    r.state = state
    answer = r.scheduler.submit(QueryArgs("hi"), SETTINGS).answer
    assert answer.status == Status.NOT_READY and f"node is {state}" in answer.message, answer.message
    assert not r.engine.entered.is_set()


def test_no_model_loaded_is_not_ready(rig):
    r = rig(start=False)
    r.put_frame()
    answer = r.scheduler.submit(QueryArgs("hi"), SETTINGS).answer
    assert answer.status == Status.NOT_READY and "no model" in answer.message


@pytest.mark.parametrize("args,reason", [
    (QueryArgs("where is the \u202emug"), "U+202E"),
    (QueryArgs("x" * 65), "65 bytes"),
    (QueryArgs("hi", timeout_s=-1.0), "timeout_s"),
    (QueryArgs("hi", max_new_tokens=65), "max_new_tokens"),
    (QueryArgs("hi", camera="left"), "unknown camera 'left'; cameras: front, rear"),
])
def test_invalid_arguments_are_refused_at_once_and_counted(rig, args, reason):
    r = rig()
    r.put_frame()
    t0 = time.monotonic()
    answer = r.scheduler.submit(args, SETTINGS).answer
    assert answer.status == Status.INVALID_ARGUMENT and reason in answer.message, answer.message
    assert time.monotonic() - t0 < 1.0 and r.scheduler.counters["invalid"] == 1 and not r.engine.entered.is_set()


def test_a_camera_without_a_frame_is_no_frame_at_once_and_a_stale_one_comes_back_from_the_snapshot(rig):
    r = rig(open_=False)
    r.put_frame("front")
    running = r.submit_in_thread(QueryArgs("first", max_new_tokens=2))
    wait_for(r.engine.entered.is_set)  # the worker is busy: an answer now comes without it
    outcome = r.submit_within(1.0, QueryArgs("hi", camera="rear"))
    assert outcome.answer.status == Status.NO_FRAME and "'rear'" in outcome.answer.message
    assert outcome.camera == "rear" and outcome.frame is None
    r.engine.gate.set()
    running["thread"].join(30)

    r.cameras["front"].reset()
    r.cameras["front"].put_image(np.zeros((8, 8, 3), np.uint8), time.time_ns() - int(120e9), "old")
    answer = r.scheduler.submit(QueryArgs("hi"), SETTINGS).answer
    assert answer.status == Status.STALE_FRAME and "old" in answer.message and len(r.published) == 1


def test_a_full_queue_answers_busy_at_once(rig):
    r = rig(queue_size=1, open_=False)
    r.put_frame()
    running = r.submit_in_thread(QueryArgs("first", max_new_tokens=2))
    wait_for(r.engine.entered.is_set)  # the worker is stuck in the model with the first query
    queued = r.submit_in_thread(QueryArgs("second", max_new_tokens=2))
    wait_for(lambda: r.scheduler.queue_depth == 1)
    busy = r.submit_within(1.0, QueryArgs("third")).answer
    assert busy.status == Status.BUSY and "1 queries are waiting" in busy.message
    r.engine.gate.set()
    for box in (running, queued):
        box["thread"].join(60)
        assert box["outcome"].answer.status == Status.OK, box["outcome"].answer
    assert r.scheduler.counters == {"served": 2, "failed": 0, "busy": 1, "invalid": 0}


def test_a_stuck_model_gives_timeout_within_the_deadline_and_margin_and_the_worker_goes_on(rig):
    r = rig(open_=False, wait_margin_s=0.3)
    r.put_frame()
    t0 = time.monotonic()
    outcome = r.submit_within(5.0, QueryArgs("hi", timeout_s=0.2, max_new_tokens=2))
    waited = time.monotonic() - t0
    assert outcome.answer.status == Status.TIMEOUT and "still busy" in outcome.answer.message
    assert 0.5 <= waited < 0.5 + 1.0, waited
    r.engine.gate.set()  # the model comes back: the abandoned query ends, the next one is served
    answer = r.scheduler.submit(QueryArgs("hi", max_new_tokens=2), SETTINGS).answer
    assert answer.status == Status.OK, answer


def test_a_deadline_reached_while_generating_gives_timeout_from_the_model(rig):
    r = rig(open_=False)
    r.put_frame()
    box = r.submit_in_thread(QueryArgs("hi", timeout_s=0.3, max_new_tokens=8))
    wait_for(r.engine.entered.is_set)
    time.sleep(0.4)  # past the deadline, within the margin: the engine stops at its first token
    r.engine.gate.set()
    box["thread"].join(30)
    answer = box["outcome"].answer
    assert answer.status == Status.TIMEOUT and "deadline reached after 1 tokens" in answer.message, answer


def test_cancel_stops_the_running_query_and_abandons_a_queued_one(rig):
    r = rig(open_=False, honour_cancel=True)
    r.put_frame()
    stop_running, stop_queued = threading.Event(), threading.Event()
    running = r.submit_in_thread(QueryArgs("first", max_new_tokens=8), cancelled=stop_running.is_set)
    wait_for(r.engine.entered.is_set)
    queued = r.submit_in_thread(QueryArgs("second", max_new_tokens=8), cancelled=stop_queued.is_set)
    wait_for(lambda: r.scheduler.queue_depth == 1)
    stop_queued.set()
    time.sleep(0.2)  # the waiting caller notices and marks its job cancelled
    stop_running.set()
    for box in (running, queued):
        box["thread"].join(30)
    first, second = running["outcome"].answer, queued["outcome"].answer
    assert first.status == Status.OK and first.message.startswith("cancelled after"), first  # partial answer
    assert second.status == Status.TIMEOUT and "abandoned by the caller" in second.message, second


def test_stop_cancels_the_running_query_and_answers_queued_ones_not_ready(rig):
    r = rig(open_=False, honour_cancel=True)
    r.put_frame()
    running = r.submit_in_thread(QueryArgs("first", max_new_tokens=8))
    wait_for(r.engine.entered.is_set)
    queued = [r.submit_in_thread(QueryArgs(f"query {i}", max_new_tokens=8)) for i in range(2)]
    wait_for(lambda: r.scheduler.queue_depth == 2)
    r.scheduler.stop()
    for box in (running, *queued):
        box["thread"].join(10)
    assert running["outcome"].answer.message.startswith("cancelled after"), running["outcome"].answer
    for box in queued:
        answer = box["outcome"].answer
        assert answer.status == Status.NOT_READY and "unloaded" in answer.message, answer
    assert r.scheduler.pipeline is None and not r.scheduler.running
    assert r.scheduler.submit(QueryArgs("hi"), SETTINGS).answer.status == Status.NOT_READY


def test_the_worker_survives_exceptions_in_the_node_callables(rig):
    r = rig()
    r.put_frame()
    r.snapshot_error = RuntimeError("snapshot broke")
    answer = r.scheduler.submit(QueryArgs("hi", max_new_tokens=2), SETTINGS).answer
    assert answer.status == Status.MODEL_ERROR and "internal error: RuntimeError: snapshot broke" in answer.message
    r.publish_error = RuntimeError("publisher broke")  # after the answer: the caller still gets it
    assert r.scheduler.submit(QueryArgs("hi", max_new_tokens=2), SETTINGS).answer.status == Status.OK
    assert r.scheduler.submit(QueryArgs("hi", max_new_tokens=2), SETTINGS).answer.status == Status.OK
    assert [job.answer.status for job in r.published] == [Status.OK, Status.OK]  # the answer given stays given


def test_the_instruction_is_normalised_once_into_the_request(rig, monkeypatch):
    r = rig()
    r.put_frame()
    calls = []
    original = requests.normalise_instruction
    monkeypatch.setattr(requests, "normalise_instruction", lambda text, n: calls.append(text) or original(text, n))
    args = QueryArgs("  where   is\tthe  mug? ", ground=True, max_new_tokens=2)
    assert r.scheduler.submit(args, SETTINGS).answer.status == Status.OK
    assert calls == [args.instruction]
    request = r.published[0].request
    assert (request.task, request.instruction, request.timeout_s) == (Task.GROUND, "where is the mug?", 30.0)
    assert args == QueryArgs("  where   is\tthe  mug? ", ground=True, max_new_tokens=2)  # the caller's is unchanged


def test_the_query_message_is_copied_not_changed():
    Query = pytest.importorskip("vlm_ros.srv", reason="the built interfaces are not importable").Query
    from vlm_ros.ros.convert import query_from_msg

    msg = Query.Request(instruction="  where   is\tthe  mug? ", camera="front", ground=True, timeout_s=2.5,
                        max_new_tokens=7)
    args = query_from_msg(msg)
    request, error = requests.build_request(args, SETTINGS)
    assert error == "" and request == Request(Task.GROUND, "where is the mug?", 7, 2.5)
    assert (msg.instruction, msg.camera, msg.ground, msg.max_new_tokens) == ("  where   is\tthe  mug? ", "front",
                                                                             True, 7)


def test_background_jobs_run_when_active_and_yield_to_queries(rig):
    r = rig(queue_size=1)
    r.put_frame()
    done = threading.Event()
    described = []
    request = Request(Task.DESCRIBE, "", 4, 30.0)
    assert r.scheduler.enqueue_background(request, "front", on_done=lambda job: (described.append(job), done.set()))
    assert done.wait(30) and described[0].answer.status == Status.OK and described[0].frame is not None
    r.engine.gate.clear()
    assert r.scheduler.enqueue_background(request, "front", on_done=lambda job: None)  # runs, stuck in the gate
    wait_for(lambda: r.scheduler.running)
    assert r.scheduler.enqueue_background(request, "front", on_done=lambda job: None)  # fills the queue
    assert not r.scheduler.enqueue_background(request, "front", on_done=lambda job: None)  # full: skipped
    r.engine.gate.set()
    r.state = "inactive"
    assert not r.scheduler.enqueue_background(request, "front", on_done=lambda job: None)
