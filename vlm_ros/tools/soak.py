"""Soak test of the perception node over DDS on loopback: two cameras, colour + depth, queries, for a while.

    python -m vlm_ros.tools.soak --seconds 600 [--model DIR | --model tiny] [--track] [--json out.json]

The node runs in a subprocess (its own process group, stopped by PID) with two cameras, `front` and `side`.
This process publishes 640x480 rgb8 colour, 16UC1 depth and CameraInfo for both at 30 Hz (reliable, like
drivers and `ros2 bag play`) and sends a /vlm/query every 0.5 s, alternating cameras, without waiting for the
previous one. With --track a Track goal ("detect all objects") follows the `front` camera for the whole run,
which then shows a rendered table-top scene with its depth instead of noise; it is cancelled at the end.
Reported:
- RSS growth of the node after warm-up: median RSS of the last 10% of the run against the median of the
  first 10% after warm-up (warm-up = the first 25%, at most 60 s);
- p95 query latency of the first third of the run against the last third (drift);
- statuses of all queries (and any that never returned), frames sent vs received by the node and its dropped
  counters, from /diagnostics;
- with --track: tracker updates (feedback) and their rate, most targets in one update, the states seen, any
  non-finite number in the feedback, and how the goal ended (CANCELED when all went well).
`--model ''` is the embedded default model, `--model tiny` a tiny random LLaVA built on the fly (the CI test).
The soak looks for leaks, drift and hangs, not freshness: queries get a 30 s timeout and the node
max_frame_age_s 10 s, so that a machine starved by other work gives slow answers rather than TIMEOUT/STALE_FRAME.
ROS traffic stays on this machine: ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST is set before rclpy is imported.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vlm_ros.tools.processes import PythonProcess, node_args, rss_mb
from vlm_ros.tools.stats import percentile
from vlm_ros.tools.track_goal import start_track, wait_future

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))

CAMERAS = ("front", "side")
TRACK_CAMERA = "front"
HEIGHT, WIDTH = 480, 640
STATUS_NAMES = {0: "OK", 1: "NOT_READY", 2: "NO_FRAME", 3: "STALE_FRAME", 4: "INVALID_ARGUMENT", 5: "BUSY",
                6: "TIMEOUT", 7: "MODEL_ERROR"}


@dataclass
class SoakReport:
    seconds: float
    model: str
    machine: str
    queries: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    unanswered: int = 0  # no response within timeout + margin: a hang
    unanswered_at_s: list[float] = field(default_factory=list)  # when those were sent (seconds into the run)
    latency_p50_s: float = float("nan")
    latency_p95_first_third_s: float = float("nan")
    latency_p95_last_third_s: float = float("nan")
    latency_max_s: float = float("nan")
    rss_after_warmup_mb: float = float("nan")
    rss_end_mb: float = float("nan")
    rss_growth: float = float("nan")  # fraction
    rss_samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MB)
    sent_per_camera: dict[str, int] = field(default_factory=dict)
    publish_rate_hz: dict[str, float] = field(default_factory=dict)
    received_per_camera: dict[str, int] = field(default_factory=dict)
    depth_received_per_camera: dict[str, int] = field(default_factory=dict)
    dropped_per_camera: dict[str, dict[str, int]] = field(default_factory=dict)
    node_diagnostics: dict[str, str] = field(default_factory=dict)
    node_exit_code: int | None = None
    track: bool = False
    track_updates: int = 0
    track_update_hz: float = float("nan")
    track_targets_max: int = 0
    track_states: dict[str, int] = field(default_factory=dict)  # tracks per state, over all updates
    track_nonfinite: int = 0  # tracks with a non-finite number (must stay 0)
    track_end: str = ""  # the goal's final state after the cancel: CANCELED, ABORTED (status), or "no result"

    @property
    def p95_drift(self) -> float:
        return self.latency_p95_last_third_s / self.latency_p95_first_third_s

    def summary(self) -> str:
        drops = {c: sum(d.values()) for c, d in self.dropped_per_camera.items()}
        delivered = {c: f"{self.received_per_camera.get(c, 0)}/{self.sent_per_camera.get(c, 0)}" for c in CAMERAS}
        return (f"soak {self.seconds:.0f} s, model {self.model}, {self.machine}: {self.queries} queries "
                f"{self.statuses}, unanswered {self.unanswered}; latency p50 {self.latency_p50_s * 1e3:.0f} ms, "
                f"p95 first third {self.latency_p95_first_third_s * 1e3:.0f} ms -> last third "
                f"{self.latency_p95_last_third_s * 1e3:.0f} ms (drift x{self.p95_drift:.2f}), max "
                f"{self.latency_max_s * 1e3:.0f} ms; node RSS {self.rss_after_warmup_mb:.0f} MB after warm-up -> "
                f"{self.rss_end_mb:.0f} MB at the end ({self.rss_growth * 100:+.1f}%); colour frames received/sent "
                f"{delivered} (publish rate {self.publish_rate_hz} Hz), depth received "
                f"{self.depth_received_per_camera}; node dropped counters {self.dropped_per_camera} (total {drops})"
                + (f"; track: {self.track_updates} updates ({self.track_update_hz:.1f} Hz), at most "
                   f"{self.track_targets_max} targets, states {self.track_states}, non-finite "
                   f"{self.track_nonfinite}, ended {self.track_end}" if self.track else ""))


class Soak:
    def __init__(self, model: str, log_path: Path, rate_hz: float = 30.0, query_period_s: float = 0.5,
                 query_timeout_s: float = 30.0, max_new_tokens: int = 8, max_frame_age_s: float = 10.0,
                 track: bool = False):
        self.model, self.rate_hz, self.query_period_s, self.track = model, rate_hz, query_period_s, track
        self.query_timeout_s, self.max_new_tokens = query_timeout_s, max_new_tokens
        params = ["device:=cpu", "cameras:=[" + ",".join(f"'{c}'" for c in CAMERAS) + "]",
                  "diagnostics_period_s:=0.5", f"max_frame_age_s:={max_frame_age_s}"]
        for c in CAMERAS:
            params += [f"cameras.{c}.image_topic:=/{c}/image_raw", f"cameras.{c}.depth_topic:=/{c}/depth",
                       f"cameras.{c}.camera_info_topic:=/{c}/camera_info", f"cameras.{c}.depth_info_topic:=''"]
        self.process = PythonProcess(node_args(model, params), log_path)
        self.diagnostics: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.sent = dict.fromkeys(CAMERAS, 0)
        self._owns_rclpy = False
        self._start_client()

    def _start_client(self) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        from vlm_ros.srv import Query

        if not rclpy.ok():
            rclpy.init()
            self._owns_rclpy = True
        self.node = rclpy.create_node("vlm_soak")
        self.executor = SingleThreadedExecutor()  # short callbacks only (see vlm_ros.ros.node.CameraIngest)
        self.executor.add_node(self.node)
        self._spin = threading.Thread(target=self.executor.spin, daemon=True)
        self._spin.start()
        self.Query = Query
        # Responses wait in this process's DDS reader until its executor takes them: with the default depth
        # of 10, a client starved for a few seconds (here: the camera thread publishing ~90 MB/s) loses the
        # oldest responses and the call never completes. Keep them all, as the node does with requests.
        self.client = self.node.create_client(Query, "/vlm/query",
                                              qos_profile=QoSProfile(depth=256, reliability=ReliabilityPolicy.RELIABLE))
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)

    def _on_diagnostics(self, msg) -> None:
        with self._lock:
            for status in msg.status:
                self.diagnostics[status.name] = {kv.key: kv.value for kv in status.values}

    def wait_until_active(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while "active: serving queries" not in self.process.log():
            if self.process.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the node did not become active:\n{self.process.log()[-3000:]}")
            time.sleep(0.2)
        if not self.client.wait_for_service(timeout_sec=60):
            raise RuntimeError("/vlm/query did not appear")

    # --- cameras ----------------------------------------------------------------------------------------
    def _messages(self):
        from sensor_msgs.msg import CameraInfo, Image

        from vlm_ros.core.images import encode_depth
        from vlm_ros.embedded.scenes import render_scene

        rng = np.random.default_rng(0)
        out = {}
        for i, camera in enumerate(CAMERAS):
            rgb = (rng.random((HEIGHT, WIDTH, 3)) * 255).astype(np.uint8)
            depth_m = np.full((HEIGHT, WIDTH), 0.8 + 0.4 * i, np.float32)
            if self.track and camera == TRACK_CAMERA:  # something to follow
                scene = render_scene(7, WIDTH, HEIGHT)
                rgb, depth_m = scene.image, scene.depth
            data, step = encode_depth(depth_m, "16UC1")
            info = CameraInfo(width=WIDTH, height=HEIGHT)
            info.k = [525.0, 0.0, 319.5, 0.0, 525.0, 239.5, 0.0, 0.0, 1.0]
            frame_id = f"{camera}_optical_frame"
            info.header.frame_id = frame_id
            colour = Image(height=HEIGHT, width=WIDTH, encoding="rgb8", step=WIDTH * 3, data=rgb.tobytes())
            depth = Image(height=HEIGHT, width=WIDTH, encoding="16UC1", step=step, data=data)
            colour.header.frame_id = depth.header.frame_id = frame_id
            out[camera] = [(self.node.create_publisher(CameraInfo, f"/{camera}/camera_info", self.qos), info),
                           (self.node.create_publisher(Image, f"/{camera}/depth", self.qos), depth),
                           (self.node.create_publisher(Image, f"/{camera}/image_raw", self.qos), colour)]
        return out

    def _cameras(self) -> None:
        """All streams at rate_hz on a fixed schedule; a late tick is skipped, never sent in a burst."""
        streams = self._messages()
        period = 1.0 / self.rate_hz
        next_tick = time.monotonic()
        while not self._stop.is_set():
            stamp = self.node.get_clock().now().to_msg()
            for camera, publishers in streams.items():
                for publisher, msg in publishers:
                    msg.header.stamp = stamp
                    publisher.publish(msg)
                self.sent[camera] += 1
            next_tick += period
            now = time.monotonic()
            if next_tick < now:
                next_tick = now + period - (now - next_tick) % period
            self._stop.wait(next_tick - now)

    # --- the track ----------------------------------------------------------------------------------------
    def _start_track(self, report: SoakReport):
        """A Track goal on TRACK_CAMERA whose feedback fills the report; its goal handle."""

        def on_feedback(feedback) -> None:
            tracks = feedback.tracks
            with self._lock:
                report.track_updates += 1
                report.track_targets_max = max(report.track_targets_max, len(tracks))
                for t in tracks:
                    report.track_states[t.state] = report.track_states.get(t.state, 0) + 1
                    report.track_nonfinite += not all(math.isfinite(v) for v in _track_numbers(t))

        return start_track(self.node, on_feedback, camera=TRACK_CAMERA)

    @staticmethod
    def _end_track(handle) -> str:
        """Cancel the goal; its final state."""
        from action_msgs.msg import GoalStatus

        handle.cancel_goal_async()
        result = wait_future(handle.get_result_async(), 30)
        if result is None:
            return "no result"
        if result.status == GoalStatus.STATUS_CANCELED:
            return "CANCELED"
        name = {GoalStatus.STATUS_ABORTED: "ABORTED", GoalStatus.STATUS_SUCCEEDED: "SUCCEEDED"}.get(
            result.status, str(result.status))
        return f"{name} ({STATUS_NAMES.get(result.result.status)}: {result.result.message})"

    # --- the run ----------------------------------------------------------------------------------------
    def run(self, seconds: float) -> SoakReport:
        report = SoakReport(seconds, self.model or "embedded default", f"{os.cpu_count()} CPUs {os.uname().machine}")
        camera_thread = threading.Thread(target=self._cameras, daemon=True)
        camera_thread.start()
        queries: list[tuple[float, float, object, list]] = []  # (since start, issue time, future, [done time])
        pid = self.process.pid
        try:
            # settle: the node receives frames on both cameras before the clock starts
            deadline = time.monotonic() + 60
            while not all(int(self.diagnostics.get(f"vlm: camera {c}", {}).get("received", 0)) > 0 for c in CAMERAS):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no frames reached the node: {self.diagnostics}")
                time.sleep(0.1)
            report.track = self.track
            goal = self._start_track(report) if self.track else None
            sent_at_start = dict(self.sent)
            start = time.monotonic()
            with self._lock:
                report.track_updates = 0
            next_query, next_sample, n = start, start, 0
            while (now := time.monotonic()) < start + seconds:
                if now >= next_sample:
                    report.rss_samples.append((now - start, rss_mb(pid)))
                    next_sample += 1.0
                if now >= next_query:
                    done_at: list[float] = []
                    future = self.client.call_async(self.Query.Request(
                        instruction="describe the scene", camera=CAMERAS[n % 2], max_new_tokens=self.max_new_tokens,
                        timeout_s=self.query_timeout_s))
                    future.add_done_callback(lambda f, d=done_at: d.append(time.monotonic()))
                    queries.append((now - start, now, future, done_at))
                    n += 1
                    next_query += self.query_period_s
                if self.process.proc.poll() is not None:
                    raise RuntimeError(f"the node exited with {self.process.proc.returncode}:\n"
                                       f"{self.process.log()[-3000:]}")
                time.sleep(0.01)
            elapsed = time.monotonic() - start
            if goal is not None:
                report.track_update_hz = report.track_updates / elapsed
                report.track_end = self._end_track(goal)
            sent_in_run = {c: self.sent[c] - sent_at_start[c] for c in CAMERAS}
            # the node answers within a query's timeout plus 2 s; on a starved machine the answer can arrive
            # later: only one still missing a minute after that counts as a hang
            wait_until = time.monotonic() + self.query_timeout_s + 2.0 + 60.0
            while not all(q[2].done() for q in queries) and time.monotonic() < wait_until:
                time.sleep(0.05)
            time.sleep(1.2)  # two diagnostics periods after the last query
        finally:
            self._stop.set()
            camera_thread.join(5)
        report.publish_rate_hz = {c: round(sent_in_run[c] / elapsed, 1) for c in CAMERAS}
        self._fill(report, queries, seconds)
        return report

    def _fill(self, report: SoakReport, queries, seconds: float) -> None:
        latencies: list[tuple[float, float]] = []
        for since_start, issued, future, done_at in queries:
            if not future.done():
                report.unanswered += 1
                report.unanswered_at_s.append(round(since_start, 2))
                continue
            name = STATUS_NAMES.get(future.result().status, str(future.result().status))
            report.statuses[name] = report.statuses.get(name, 0) + 1
            if name == "OK":
                latencies.append((since_start, done_at[0] - issued))
        report.queries = len(queries)
        thirds = [[lat for t, lat in latencies if k * seconds / 3 <= t < (k + 1) * seconds / 3] for k in range(3)]
        all_lat = [lat for _, lat in latencies]
        report.latency_p50_s = percentile(all_lat, 0.5)
        report.latency_max_s = max(all_lat, default=float("nan"))
        report.latency_p95_first_third_s = percentile(thirds[0], 0.95)
        report.latency_p95_last_third_s = percentile(thirds[2], 0.95)
        warmup = min(0.25 * seconds, 60.0)
        window = max(0.1 * seconds, 3.0)
        after = [mb for t, mb in report.rss_samples if warmup <= t < warmup + window]
        end = [mb for t, mb in report.rss_samples if t >= seconds - window]
        report.rss_after_warmup_mb = statistics.median(after) if after else float("nan")
        report.rss_end_mb = statistics.median(end) if end else float("nan")
        report.rss_growth = report.rss_end_mb / report.rss_after_warmup_mb - 1.0
        report.sent_per_camera = dict(self.sent)
        with self._lock:
            for c in CAMERAS:
                values = self.diagnostics.get(f"vlm: camera {c}", {})
                report.received_per_camera[c] = int(values.get("received", 0))
                report.depth_received_per_camera[c] = int(values.get("depth_received", 0))
                report.dropped_per_camera[c] = {k.removeprefix("dropped: "): int(v) for k, v in values.items()
                                                if k.startswith("dropped: ")}
            report.node_diagnostics = dict(self.diagnostics.get("vlm: model", {}))

    def close(self) -> int | None:
        import rclpy

        self._stop.set()
        self.executor.shutdown()
        self.node.destroy_node()
        if self._owns_rclpy:
            rclpy.try_shutdown()
        return self.process.stop(20)


def _track_numbers(t) -> tuple[float, ...]:
    """Every number of a TrackedTarget a planner reads."""
    g = t.target
    return (t.age_s, t.confidence, g.score, g.x_min, g.y_min, g.x_max, g.y_max, g.point_x, g.point_y,
            g.position.x, g.position.y, g.position.z, g.extent_center.x, g.extent_center.y, g.extent_center.z,
            g.extent_size.x, g.extent_size.y, g.extent_size.z, g.valid_fraction)


def run_soak(seconds: float, model: str, log_path: Path, **kwargs) -> SoakReport:
    """Start the node, soak it for `seconds` after warm-up frames arrive, stop it; the report."""
    soak = Soak(model, log_path, **kwargs)
    try:
        soak.wait_until_active()
        report = soak.run(seconds)
    finally:
        code = soak.close()
    report.node_exit_code = code
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--model", default="", help="model directory; '' = the embedded default; 'tiny' = a tiny "
                                                    "random LLaVA built in a temporary directory")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--track", action="store_true", help="a Track goal follows the front camera all along")
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--log", default="", help="node log file (default: a temporary file)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vlm_soak_") as tmp:
        model = args.model
        if model == "tiny":
            from vlm_ros.testing.tiny import build_tiny_llava

            model = str(build_tiny_llava(Path(tmp) / "tiny_llava"))
        log_path = Path(args.log) if args.log else Path(tmp) / "node.log"
        report = run_soak(args.seconds, model, log_path, max_new_tokens=args.max_new_tokens, track=args.track)
    print(report.summary())
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(report), indent=2))
    ok = (report.unanswered == 0 and set(report.statuses) <= {"OK", "BUSY"} and report.rss_growth < 0.05
          and (not args.track or (report.track_end == "CANCELED" and report.track_updates > 0
                                  and report.track_nonfinite == 0)))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
