"""The perception node: cameras in; /vlm/query service and action; targets, descriptions, diagnostics out.

A lifecycle node. configure loads the model, activate subscribes to the cameras, deactivate unsubscribes,
cleanup frees the model. Queries are served in every state (NOT_READY unless active), so a caller never
hangs. Threads:
  - image callbacks: decode, validate, store the newest frame; no inference. They run on a companion node
    `<name>_cameras` spun by its own single-threaded executor (see CameraIngest).
  - service/action callbacks (reentrant group): hand the query to the ROS-free Scheduler (vlm_ros/scheduler.py:
    refusals, bounded queue, deadlines) and wait for its answer.
  - the scheduler's one worker thread: runs the Pipeline on the freshest frame, then publishes the outputs here.
  - Track goals (same reentrant group): each runs a ROS-free TrackSession (vlm_ros/tracking/session.py) in its
    execute callback's thread: the camera's newest frame -> tracker -> feedback and ~/tracks; re-groundings queue
    on the scheduler's worker like queries.
  - timers (mutually exclusive group): diagnostics, periodic description.
"""

from __future__ import annotations

import gc
import resource
import signal
import sys
import threading
import time
from typing import Any, Callable

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import JumpThreshold
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header
from visualization_msgs.msg import Marker, MarkerArray

from vlm_ros.action import Query as QueryAction
from vlm_ros.action import Track as TrackAction
from vlm_ros.core.frames import CameraBuffer
from vlm_ros.core.geometry import intrinsics_from_k
from vlm_ros.core.images import ImageDecodeError, decode_compressed, decode_depth, decode_image
from vlm_ros.core.requests import QuerySettings, normalise_instruction
from vlm_ros.core.types import Answer, Frame, Request, Status, Task
from vlm_ros.memory import diagnostic_values, node_admission, release_free_memory
from vlm_ros.msg import GroundedTargetArray, SceneDescription, TrackedTargetArray
from vlm_ros.ros.convert import fill_result, make_header, query_from_msg, stamp_to_ns, target_to_msg, track_to_msg
from vlm_ros.ros.parameters import NODE_PARAMS, ParamSpec, camera_specs
from vlm_ros.scheduler import Job, Outcome, Scheduler
from vlm_ros.srv import Query
from vlm_ros.tracking import TrackerSettings
from vlm_ros.tracking.session import TrackGoal, TrackSession, check_goal

MAX_IMAGE_PIXELS = 40_000_000  # larger declared images are dropped before any allocation
REQUEST_QOS_DEPTH = 256  # requests that may wait in DDS before the executor takes them
# How often the node's threads hand over the GIL (Python's default: every 5 ms). A Track goal's thread makes many
# short OpenCV calls per update, each giving up the GIL; while the model worker runs Python (generate), each one
# waited up to the interval to get it back: a 5 ms update took 100-300 ms, and a 30 Hz replay got 46-51 tracker
# updates for 91 frames (83-87 at 0.5 ms).
GIL_SWITCH_INTERVAL_S = 0.0005
# Camera subscriptions: the sensor-data profile, except that reliability follows the publishers where rclpy
# can (BEST_AVAILABLE, Iron and newer): reliable drivers and bag players then deliver every fragment of a large
# image instead of losing frames; best-effort publishers still match. Humble falls back to best effort.
CAMERA_QOS = QoSProfile(depth=qos_profile_sensor_data.depth, history=qos_profile_sensor_data.history,
                        reliability=getattr(ReliabilityPolicy, "BEST_AVAILABLE", ReliabilityPolicy.BEST_EFFORT))


class CameraIngest:
    """The camera subscriptions, on a companion node `<name>_cameras` spun by its own single-threaded executor.

    rclpy's MultiThreadedExecutor hands a ready message to a pool thread, which takes it from DDS a moment later;
    until then the subscription stays ready and the executor's loop spins on it, holding the GIL. A 640x480 rgb8
    camera at 60 Hz then cost 123 ms of CPU per frame and only 8 frames a second got through (rclpy 9.1, 2-core
    machine); a single-threaded executor took all 60 at 3.8 ms per frame. Camera callbacks are short (decode,
    validate, store), so one thread that runs them inline keeps up, and no query ever waits on it.
    """

    def __init__(self, owner: Node):
        name = f"{owner.get_name()}_cameras"
        # launch renames every node of a process with a global `__node:=` rule; a node's own rule wins over it.
        # Topic remappings still apply, and relative topic names resolve in the owner's namespace.
        self.node = rclpy.create_node(name, namespace=owner.get_namespace(), context=owner.context,
                                      cli_args=["--ros-args", "-r", f"__node:={name}"],
                                      start_parameter_services=False)
        self._executor = SingleThreadedExecutor(context=owner.context)
        self._executor.add_node(self.node)
        self._subscriptions: list = []
        self._thread = threading.Thread(target=spin, args=(self.node, self._executor), name=name, daemon=True)
        self._thread.start()

    def subscribe(self, msg_type, topic: str, callback: Callable[[Any], None]):
        self._subscriptions.append(self.node.create_subscription(msg_type, topic, callback, CAMERA_QOS))
        return self._subscriptions[-1]

    def has_publisher(self, subscription) -> bool:
        try:
            if hasattr(subscription, "get_publisher_count"):  # rclpy >= Iron
                return subscription.get_publisher_count() > 0
            return self.node.count_publishers(subscription.topic_name) > 0  # Humble: by the resolved (remapped) name
        except Exception:  # noqa: BLE001 -- destroyed by a deactivation in the meantime: nothing to wait for
            return False

    def unsubscribe_all(self) -> None:
        for subscription in self._subscriptions:
            self.node.destroy_subscription(subscription)
        self._subscriptions.clear()

    def close(self) -> None:
        self._executor.shutdown()
        self._thread.join(timeout=5.0)
        self.node.destroy_node()


class PerceptionNode(LifecycleNode):
    def __init__(self, **kwargs: Any):
        super().__init__("vlm", **kwargs)
        self._specs: dict[str, ParamSpec] = {}
        for spec in NODE_PARAMS:
            self._declare(spec)
        for camera in self.p("cameras"):
            for spec in camera_specs(camera):
                self._declare(spec)
        problems = [r for r in (s.check(self.p(n)) for n, s in self._specs.items()) if r]
        if self.p("default_camera") not in self.p("cameras"):
            problems.append(f"default_camera '{self.p('default_camera')}' is not in cameras {self.p('cameras')}")
        if problems:
            raise ValueError("invalid parameters: " + "; ".join(problems))
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._query_group = ReentrantCallbackGroup()  # concurrent queries wait in parallel, never on each other
        self._timer_group = MutuallyExclusiveCallbackGroup()

        self.buffers = {c: CameraBuffer(c, int(self.p("depth_sync_tolerance_s") * 1e9)) for c in self.p("cameras")}
        self._cameras = CameraIngest(self)
        self._companions: dict[str, tuple] = {}  # camera -> (depth, CameraInfo) subscriptions, None where not set
        self._backend = "none"
        self._memory = None  # the last configure's memory admission (vlm_ros/memory.py)
        self._configure_error = ""  # why the last configure failed, shown in diagnostics until one succeeds
        self._active = False
        self._scheduler = Scheduler(self.p("queue_size"), self.buffers, snapshot=self._snapshot,
                                    state=self.lifecycle_state, publish=self._publish_job,
                                    model_ready=self.on_model_ready, log=self.get_logger())
        # A replay that loops (or a simulator that restarts) moves ROS time backwards: frames and depth stamped
        # "in the future" must not answer queries, so every buffer starts again (counted as a reset).
        self._time_jump_handle = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=Duration(nanoseconds=-1_000_000), on_clock_change=False),
            post_callback=self._on_time_jump)

        # Requests wait in the DDS reader until an executor thread takes them; the default depth of 10 would
        # silently drop the eleventh of a burst. Every request must get an answer (BUSY at worst).
        requests_qos = QoSProfile(depth=REQUEST_QOS_DEPTH, reliability=ReliabilityPolicy.RELIABLE)
        service = self.create_service(Query, self.p("service_name"), self._on_service, qos_profile=requests_qos,
                                      callback_group=self._query_group)
        self._action_server = ActionServer(
            self, QueryAction, self.p("action_name"), execute_callback=self._on_action,
            goal_callback=lambda goal: GoalResponse.ACCEPT, cancel_callback=lambda handle: CancelResponse.ACCEPT,
            goal_service_qos_profile=requests_qos, result_service_qos_profile=requests_qos,
            callback_group=self._query_group)
        # Track goals run in their execute callbacks (the executor has a thread per allowed goal, see main)
        self._track_server = ActionServer(
            self, TrackAction, self.p("track_action_name"), execute_callback=self._on_track,
            goal_callback=lambda goal: GoalResponse.ACCEPT, cancel_callback=lambda handle: CancelResponse.ACCEPT,
            goal_service_qos_profile=requests_qos, result_service_qos_profile=requests_qos,
            callback_group=self._query_group)
        self._tracks_lock = threading.Lock()
        self._tracks_running = 0
        self._tracks_pub = self.create_publisher(TrackedTargetArray, "~/tracks", 10)
        self._targets_pub = self.create_publisher(GroundedTargetArray, "~/targets", 10)
        self._description_pub = self.create_publisher(SceneDescription, "~/description", 10)
        self._annotated_pub = self.create_publisher(Image, "~/annotated", qos_profile_sensor_data)
        self._markers_pub = self.create_publisher(MarkerArray, "~/markers", 10)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(self.p("diagnostics_period_s"), self._publish_diagnostics, callback_group=self._timer_group)
        self._description_timer = None
        self.get_logger().info(f"node created; cameras {self.p('cameras')}, service and action {service.srv_name}")

    def destroy_node(self):
        self._cameras.close()
        return super().destroy_node()

    # --- parameters -----------------------------------------------------------------------------------------
    def _declare(self, spec: ParamSpec) -> None:
        self._specs[spec.name] = spec
        self.declare_parameter(spec.name, spec.default, spec.descriptor())

    def p(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _on_set_parameters(self, params) -> SetParametersResult:
        for param in params:
            spec = self._specs.get(param.name)
            reason = spec.check(param.value) if spec else ""
            if param.name == "default_camera" and param.value not in self.p("cameras"):
                reason = f"default_camera must be one of cameras {self.p('cameras')}; got '{param.value}'"
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    # --- hooks: nothing here; a test subclass injects faults through them (test/ros/faulty_node.py) -------------
    def on_image_decoded(self, camera: str) -> None:
        """Runs in each colour image callback after decoding, before the frame is stored."""

    def on_model_ready(self, pipeline) -> None:
        """Runs on the worker thread after the warm-up, before the first real query."""

    def lifecycle_state(self) -> str:
        """'active' while queries are served, else the lifecycle state (unconfigured, inactive, configuring, ...)."""
        if self._active:
            return "active"
        label = self._state_machine.current_state[1]  # rclpy keeps the machine private (Humble to Kilted have it)
        return "shutting down" if label == "active" else label

    def _on_time_jump(self, jump) -> None:
        for buffer in self.buffers.values():
            buffer.reset()
        self.get_logger().warning(f"time jumped back by {-jump.delta.nanoseconds / 1e9:.3f} s (replay looped?): "
                                  "camera buffers reset")

    # --- lifecycle ----------------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._memory = node_admission(self.p, self.get_logger().info)  # refuses what would not fit
            pipeline, self._backend = self._load_pipeline()
        except Exception as exc:  # a clear reason in the log and diagnostics, and the node stays unconfigured
            self._configure_error = f"configure failed: {type(exc).__name__}: {exc}"
            self.get_logger().error(self._configure_error)
            return TransitionCallbackReturn.FAILURE
        self._configure_error = ""
        warm_up = self.p("warmup") and self.p("backend") != "remote"  # a remote server warms itself; don't bill a query
        self._scheduler.start(pipeline, cpu_threads=self.p("cpu_threads"),
                              warmup_size=(self.p("engine_image_height"), self.p("engine_image_width")) if warm_up
                              else None)
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        for camera in self.p("cameras"):
            self._subscribe(camera)
        rate = self.p("description_rate_hz")
        if rate > 0:
            self._description_timer = self.create_timer(1.0 / rate, self._describe_periodically,
                                                        callback_group=self._timer_group)
        self._active = True
        self.get_logger().info("active: serving queries")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self._companions.clear()
        self._cameras.unsubscribe_all()
        if self._description_timer is not None:
            self.destroy_timer(self._description_timer)
            self._description_timer = None
        for buffer in self.buffers.values():
            buffer.reset()
        self.get_logger().info("inactive: queries get NOT_READY")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._scheduler.stop()
        self._backend = "none"
        gc.collect()
        release_free_memory()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
        self.get_logger().info("cleaned up: model unloaded")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self._scheduler.stop()
        return TransitionCallbackReturn.SUCCESS

    def _load_pipeline(self):
        from vlm_ros.backends import BackendSettings, build_pipeline
        from vlm_ros.grounding import GroundingSettings

        return build_pipeline(BackendSettings.from_params(self.p), self.get_logger().info,
                              GroundingSettings.from_params(self.p))

    # --- cameras ------------------------------------------------------------------------------------------
    def _subscribe(self, camera: str) -> None:
        buffer = self.buffers[camera]
        handlers = {
            "image_topic": (Image, lambda m: self._on_image(m, buffer)),
            "compressed_topic": (CompressedImage, lambda m: self._on_compressed(m, buffer)),
            "camera_info_topic": (CameraInfo, lambda m: self._on_info(m, buffer, False)),
            "depth_topic": (Image, lambda m: self._on_depth(m, buffer)),
            "depth_info_topic": (CameraInfo, lambda m: self._on_info(m, buffer, True)),
        }

        def guarded(callback: Callable[[Any], None]) -> Callable[[Any], None]:
            # An exception escaping a callback goes to the executor: rclpy re-raises it from spin() (the node
            # exits) or leaves the subscription's task failed (seen with rclpy 9.1: the camera was never read
            # again). So it is counted as a drop and logged (throttled), and the node keeps spinning.
            def call(msg) -> None:
                try:
                    callback(msg)
                except Exception as exc:  # noqa: BLE001 -- any bug or surprise in decoding must not kill the node
                    self._drop(buffer, "callback error", exc)
            return call
        subscriptions = {}
        for key, (msg_type, callback) in handlers.items():
            topic = self.p(f"cameras.{camera}.{key}")
            if topic:
                subscriptions[key] = self._cameras.subscribe(msg_type, topic, guarded(callback))
        self._companions[camera] = (subscriptions.get("depth_topic"), subscriptions.get("camera_info_topic"))

    def _drop(self, buffer: CameraBuffer, reason: str, exc: Exception) -> None:
        buffer.drop(reason)
        self.get_logger().warning(f"camera '{buffer.name}': dropped {reason}: {exc}", throttle_duration_sec=5.0)

    def _on_image(self, msg: Image, buffer: CameraBuffer) -> None:
        t0 = time.perf_counter()
        try:
            rgb = decode_image(msg.encoding, msg.width, msg.height, msg.step, msg.data, bool(msg.is_bigendian),
                               max_pixels=MAX_IMAGE_PIXELS)
        except ImageDecodeError as exc:
            return self._drop(buffer, "invalid image", exc)
        self.on_image_decoded(buffer.name)
        buffer.put_image(rgb, stamp_to_ns(msg.header.stamp), msg.header.frame_id, time.perf_counter() - t0)

    def _on_compressed(self, msg: CompressedImage, buffer: CameraBuffer) -> None:
        t0 = time.perf_counter()
        try:
            rgb = decode_compressed(msg.format, bytes(msg.data), max_pixels=MAX_IMAGE_PIXELS)
        except ImageDecodeError as exc:
            return self._drop(buffer, "invalid compressed image", exc)
        buffer.put_image(rgb, stamp_to_ns(msg.header.stamp), msg.header.frame_id, time.perf_counter() - t0)

    def _on_depth(self, msg: Image, buffer: CameraBuffer) -> None:
        try:
            depth = decode_depth(msg.encoding, msg.width, msg.height, msg.step, msg.data, bool(msg.is_bigendian),
                                 max_pixels=MAX_IMAGE_PIXELS)
        except ImageDecodeError as exc:
            return self._drop(buffer, "invalid depth", exc)
        buffer.put_depth(depth, stamp_to_ns(msg.header.stamp), msg.header.frame_id)

    def _on_info(self, msg: CameraInfo, buffer: CameraBuffer, depth: bool) -> None:
        intrinsics = intrinsics_from_k(msg.k)
        if intrinsics is None:
            buffer.drop("invalid camera_info")
            self.get_logger().warning(f"camera '{buffer.name}': CameraInfo has an invalid focal length; "
                                      "no 3-D targets from it", throttle_duration_sec=10.0)
        buffer.put_intrinsics(intrinsics, depth=depth, size=(msg.width, msg.height),
                              stamp_ns=stamp_to_ns(msg.header.stamp))

    # --- queries: ROS messages <-> the scheduler ----------------------------------------------------------
    def _on_service(self, request: Query.Request, response: Query.Response) -> Query.Response:
        return self._fill(response, self._scheduler.submit(query_from_msg(request), self._query_settings()))

    def _on_action(self, goal_handle) -> QueryAction.Result:
        def feedback(text: str, n: int) -> None:
            goal_handle.publish_feedback(QueryAction.Feedback(partial_answer=text, generated_tokens=n))

        outcome = self._scheduler.submit(query_from_msg(goal_handle.request), self._query_settings(), feedback,
                                         lambda: goal_handle.is_cancel_requested)
        result = self._fill(QueryAction.Result(), outcome)
        # An action client sees the goal's terminal state first: only an OK answer is a success.
        if goal_handle.is_cancel_requested:
            goal_handle.canceled()
        elif outcome.answer.status == Status.OK:
            goal_handle.succeed()
        else:
            goal_handle.abort()
        return result

    # --- tracks: the Track action <-> a ROS-free TrackSession -------------------------------------------------
    def _on_track(self, goal_handle) -> TrackAction.Result:
        goal = goal_handle.request
        status, message = self._start_track(goal)
        if status is None:
            try:
                status, message = self._run_track(goal_handle, self._track_goal(goal))
            finally:
                with self._tracks_lock:
                    self._tracks_running -= 1
        if goal_handle.is_cancel_requested:
            goal_handle.canceled()
        elif status == Status.OK:
            goal_handle.succeed()
        else:
            goal_handle.abort()
        return TrackAction.Result(status=int(status), message=message)

    def _start_track(self, goal) -> tuple[Status | None, str]:
        """(None, "") and a slot taken when the goal can run, else the status and reason it cannot."""
        state = self.lifecycle_state()
        if state != "active":
            return Status.NOT_READY, f"node is {state}; tracks run only while it is active"
        _, error = normalise_instruction(goal.instruction, self.p("max_instruction_bytes"))
        camera = goal.camera or self.p("default_camera")
        if not error and camera not in self.buffers:
            error = f"unknown camera '{camera}'; cameras: {', '.join(self.buffers)}"
        error = error or check_goal(float(goal.update_rate_hz), float(goal.reground_period_s), int(goal.max_targets))
        if error:
            return Status.INVALID_ARGUMENT, error
        with self._tracks_lock:
            if self._tracks_running >= self.p("max_tracks"):
                return Status.BUSY, f"{self._tracks_running} tracks are running (max_tracks); cancel one or try later"
            self._tracks_running += 1
        return None, ""

    def _track_goal(self, goal) -> TrackGoal:
        instruction, _ = normalise_instruction(goal.instruction, self.p("max_instruction_bytes"))
        return TrackGoal(instruction, goal.camera or self.p("default_camera"), float(goal.update_rate_hz),
                         float(goal.reground_period_s) or self.p("track_reground_period_s"),
                         int(goal.max_targets) or self.p("track_max_targets"))

    def _run_track(self, goal_handle, goal: TrackGoal) -> tuple[Status, str]:
        camera = goal.camera

        def publish(tracks, frame: Frame) -> None:
            header = make_header(frame.stamp_ns, frame.frame_id)
            msgs = [track_to_msg(t) for t in tracks]
            goal_handle.publish_feedback(TrackAction.Feedback(header=header, camera=camera, tracks=msgs))
            self._tracks_pub.publish(TrackedTargetArray(header=header, camera=camera, instruction=goal.instruction,
                                                        tracks=msgs))

        settings = TrackerSettings(max_targets=goal.max_targets, reground_period_s=goal.reground_period_s)
        session = TrackSession(
            goal, settings, wait_for_frame=self.buffers[camera].wait_for_image,
            snapshot=lambda: self._snapshot(camera),
            ground=lambda request, on_done: self._scheduler.enqueue_background(request, camera, on_done),
            publish=publish, camera_timeout_s=self.p("track_camera_timeout_s"),
            grounding_timeout_s=self.p("default_timeout_s"))
        self.get_logger().info(f"track started: '{goal.instruction}' on camera '{camera}'")
        status, message = session.run(lambda: self._active and not goal_handle.is_cancel_requested)
        if not goal_handle.is_cancel_requested and not self._active:
            status, message = Status.NOT_READY, f"the node stopped serving ({self.lifecycle_state()}); {message}"
        self.get_logger().info(f"track ended: '{goal.instruction}': {message}")
        return status, message

    def _query_settings(self) -> QuerySettings:
        return QuerySettings(**{name: self.p(name) for name in (
            "default_camera", "default_timeout_s", "max_timeout_s", "default_max_new_tokens", "max_new_tokens_limit",
            "max_instruction_bytes")})

    @staticmethod
    def _fill(result, outcome: Outcome):
        """A Query service response or action result from the scheduler's outcome."""
        frame = outcome.frame
        header = None if frame is None else make_header(frame.stamp_ns, frame.frame_id)
        return fill_result(result, outcome.answer, header, outcome.camera)

    def _snapshot(self, camera: str) -> tuple[Frame | None, Status, str]:
        """The frame a query on `camera` answers from (the scheduler's worker asks when the query starts)."""
        now_ns = self.get_clock().now().nanoseconds
        # a frame whose depth or CameraInfo is still on the way is worth waiting for briefly (two sync tolerances)
        companions = self._companions.get(camera, (None, None))
        depth, info = (s is not None and self._cameras.has_publisher(s) for s in companions)
        return self.buffers[camera].snapshot(
            now_ns, int(self.p("max_frame_age_s") * 1e9), companion_wait_s=2 * self.p("depth_sync_tolerance_s"),
            depth_expected=depth, intrinsics_expected=info)

    def _describe_periodically(self) -> None:
        request = Request(Task.DESCRIBE, "", self.p("default_max_new_tokens"), self.p("default_timeout_s"))
        self._scheduler.enqueue_background(request, self.p("default_camera"), on_done=self._publish_description)

    # --- outputs ------------------------------------------------------------------------------------------
    def _publish_job(self, job: Job) -> None:
        """The scheduler's publish callable: outputs of a job answered from a frame (on its worker thread)."""
        self._publish_outputs(job, job.answer, make_header(job.frame.stamp_ns, job.frame.frame_id), job.frame)

    def _publish_outputs(self, job: Job, answer: Answer, header: Header, frame: Frame) -> None:
        targets = [target_to_msg(t) for t in answer.targets]
        self._targets_pub.publish(GroundedTargetArray(header=header, camera=job.camera,
                                                      instruction=job.request.instruction, targets=targets))
        if self.p("publish_annotated") and self._annotated_pub.get_subscription_count() > 0:
            self._annotated_pub.publish(self._annotated(frame, answer, header))
        if self.p("publish_markers") and self._markers_pub.get_subscription_count() > 0:
            self._markers_pub.publish(self._markers(answer, header))

    def _publish_description(self, job: Job) -> None:
        if job.answer.status == Status.OK and job.frame is not None:
            self._description_pub.publish(SceneDescription(
                header=make_header(job.frame.stamp_ns, job.frame.frame_id), camera=job.camera, text=job.answer.text,
                targets=[target_to_msg(t) for t in job.answer.targets]))

    @staticmethod
    def _annotated(frame: Frame, answer: Answer, header: Header) -> Image:
        """The source image with each target's box (or point), mask outline and label."""
        image = np.ascontiguousarray(frame.image.copy())
        colour = (255, 64, 0)
        for t in answer.targets:
            if t.mask is not None and t.mask.data.any():
                contours, _ = cv2.findContours(t.mask.data.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
                cv2.drawContours(image, contours, -1, (0, 220, 255), 1, offset=(t.mask.x0, t.mask.y0))
            if t.box is not None:
                p1, p2 = (int(t.box.x_min), int(t.box.y_min)), (int(t.box.x_max) - 1, int(t.box.y_max) - 1)
                cv2.rectangle(image, p1, p2, colour, 2)
            else:
                p1 = (int(t.point[0]), int(t.point[1]))
                cv2.drawMarker(image, p1, colour, cv2.MARKER_CROSS, 12, 2)
            cv2.putText(image, t.label[:40], (p1[0], max(12, p1[1] - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1)
        h, w = image.shape[:2]
        return Image(header=header, height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3,
                     data=image.tobytes())

    @staticmethod
    def _markers(answer: Answer, header: Header) -> MarkerArray:
        """Per target with a 3-D position: a sphere at it, its label, and a box (CUBE) of its 3-D extent."""
        markers = [Marker(header=header, ns="vlm_targets", action=Marker.DELETEALL)]
        for i, t in enumerate(t for t in answer.targets if t.position is not None):
            sphere = Marker(header=header, ns="vlm_targets", id=3 * i, type=Marker.SPHERE, action=Marker.ADD)
            sphere.pose.position.x, sphere.pose.position.y, sphere.pose.position.z = t.position
            sphere.pose.orientation.w = 1.0
            sphere.scale.x = sphere.scale.y = sphere.scale.z = 0.02
            sphere.color.r, sphere.color.g, sphere.color.a = 1.0, 0.3, 0.9
            text = Marker(header=header, ns="vlm_targets", id=3 * i + 1, type=Marker.TEXT_VIEW_FACING,
                          action=Marker.ADD, text=t.label)
            text.pose.orientation.w = 1.0
            text.pose.position.x, text.pose.position.y, text.pose.position.z = t.position
            top = t.shape.extent_min[1] if t.shape is not None else t.position[1]
            text.pose.position.y = top - 0.04  # above the object (y is down)
            text.scale.z = 0.04
            text.color.r = text.color.g = text.color.b = text.color.a = 1.0
            markers += [sphere, text]
            if t.shape is not None and max(t.shape.size) > 0.0:
                lo, hi = t.shape.extent_min, t.shape.extent_max
                cube = Marker(header=header, ns="vlm_targets", id=3 * i + 2, type=Marker.CUBE, action=Marker.ADD)
                cube.pose.position.x, cube.pose.position.y, cube.pose.position.z = (
                    (a + b) / 2 for a, b in zip(lo, hi, strict=True))
                cube.pose.orientation.w = 1.0
                cube.scale.x, cube.scale.y, cube.scale.z = (
                    max(b - a, 0.002) for a, b in zip(lo, hi, strict=True))  # RViz: > 0
                cube.color.r, cube.color.g, cube.color.b, cube.color.a = 0.0, 0.85, 1.0, 0.35
                markers.append(cube)
        return MarkerArray(markers=markers)

    def _publish_diagnostics(self) -> None:
        now_ns = self.get_clock().now().nanoseconds
        max_age_ns = self.p("max_frame_age_s") * 1e9
        statuses = []
        for name, buffer in self.buffers.items():
            stamp, stats = buffer.newest_stamp_ns(), buffer.stats
            if not self._active:
                level, message = DiagnosticStatus.OK, "not subscribed (node inactive)"
            elif stamp is None:
                level, message = DiagnosticStatus.WARN, "no frame received yet"
            elif now_ns - stamp > max_age_ns:
                level, message = DiagnosticStatus.ERROR, f"stale: newest frame {(now_ns - stamp) / 1e9:.1f} s old"
            else:
                level, message = DiagnosticStatus.OK, "receiving"
            values = {"rate_hz": f"{stats.rate_hz:.1f}",
                      "frame_age_s": "" if stamp is None else f"{(now_ns - stamp) / 1e9:.3f}",
                      "received": stats.received, "depth_received": stats.depth_received, "resets": stats.resets,
                      "callback_ms": f"{stats.callback_s * 1e3:.2f}",
                      **{f"dropped: {reason}": n for reason, n in stats.dropped.items()}}
            statuses.append(self._status(f"vlm: camera {name}", level, message, values))
        state = self.lifecycle_state()
        level = DiagnosticStatus.OK if self._active else DiagnosticStatus.WARN
        scheduler = self._scheduler
        pipeline, timings = scheduler.pipeline, scheduler.last_timings
        message = state
        if pipeline is None and self._configure_error:
            level, message = DiagnosticStatus.ERROR, self._configure_error
        values = {"state": state, "backend": self._backend, "model": self.p("model") or "embedded default",
                  "family": getattr(getattr(pipeline, "adapter", None), "family", ""),
                  "queue_depth": scheduler.queue_depth, "running": scheduler.running,
                  **scheduler.counters,
                  "dropped_model_outputs": getattr(pipeline, "dropped_outputs", 0),
                  "last_total_s": f"{timings.total:.3f}" if timings else "",
                  "last_prefill_s": f"{timings.prefill:.3f}" if timings else "",
                  "last_decode_s": f"{timings.decode:.3f}" if timings else "",
                  "warmup_s": "" if scheduler.warmup_s is None else f"{scheduler.warmup_s:.3f}",
                  **_self_check_values(pipeline),
                  "cpu_threads": "" if scheduler.cpu_threads is None else scheduler.cpu_threads,
                  "rss_mb": f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}",  # peak
                  "rss_now_mb": f"{current_rss_mb():.0f}", **diagnostic_values(self._memory)}
        engine_diagnostics = getattr(getattr(pipeline, "engine", None), "diagnostics", None)
        if engine_diagnostics is not None:  # e.g. the remote engine: server, last latency, last error
            values.update(engine_diagnostics())
        statuses.append(self._status("vlm: model", level, message, values))
        self._diagnostics_pub.publish(DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()),
                                                      status=statuses))

    def _status(self, name: str, level: bytes, message: str, values: dict) -> DiagnosticStatus:
        return DiagnosticStatus(level=level, name=name, message=message, hardware_id=self.get_fully_qualified_name(),
                                values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])


def _self_check_values(pipeline) -> dict[str, str]:
    """Diagnostics of the backend's self-check before serving (a failed one fails configure: the error says why)."""
    result = getattr(pipeline, "self_check", None)
    if result is None:
        return {"self_check": getattr(pipeline, "self_check_note", "") or
                "not run (reference backend, remote, self_check false, or not configured)"}
    return {"self_check": result.summary(), "self_check_s": f"{result.seconds:.3f}"}


def current_rss_mb() -> float:
    """Resident memory now (Linux /proc), MiB; NaN where unavailable."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def spin(node: Node, executor) -> None:
    """executor.spin(), resumed when rclpy loses its race between destroying an entity and waiting on it.

    deactivate destroys the camera subscriptions from an executor thread while another thread may be building
    the wait set with them; rclpy then raises InvalidHandle out of spin() (ros2/rclpy issues 1206 and 1284;
    seen here with rclpy 9.1 when deactivating under a 20 Hz camera), which would end the node. The next
    wait set no longer holds the destroyed entity, so spinning again is safe. A shutdown (Ctrl-C, the context
    shut down) ends the spin quietly.
    """
    import rclpy.exceptions

    invalid_handle = getattr(rclpy.exceptions, "InvalidHandle", ())  # () catches nothing where it is absent
    while True:
        try:
            executor.spin()
            return
        except ExternalShutdownException:
            return
        except invalid_handle as exc:
            if not rclpy.ok():
                return
            node.get_logger().warning(f"executor: {exc} (an entity was destroyed while in use); spinning on")


def main(args: list[str] | None = None, node_type: Callable[[], PerceptionNode] = PerceptionNode) -> None:
    """Run the node until Ctrl-C or shutdown; node_type makes it (a test entry point passes a subclass)."""
    rclpy.init(args=args)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    try:
        node = node_type()
    except ValueError as exc:
        rclpy.logging.get_logger("vlm").fatal(str(exc))
        rclpy.try_shutdown()
        raise SystemExit(2) from None  # the fatal log above says why
    executor = MultiThreadedExecutor(num_threads=node.p("queue_size") + 4 + node.p("max_tracks"))
    executor.add_node(node)
    if node.p("autostart"):
        if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            node.trigger_activate()
    try:
        spin(node, executor)
    except KeyboardInterrupt:
        pass
    finally:
        # Ctrl-C in a terminal reaches the node twice (from the terminal and from ros2 launch): a second
        # SIGINT must not cut the cleanup short with a KeyboardInterrupt.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        node._active = False
        node._scheduler.stop()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
