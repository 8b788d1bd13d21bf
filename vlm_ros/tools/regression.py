"""Regression harness: replay a bag into the perception node, ask the sidecar's questions at their times,
compare answers and targets with the truth, report accuracy, target geometry and latency, and fail below thresholds.

Target geometry (vlm_ros.tools.geometry_metrics), for each answered target matched to a true object (box IoU
>= 0.5): mask IoU, 3-D centroid error, 3-D extent error per axis, object-centre error (sidecars of format 1 carry
no masks and extents: regenerate such a bag to have them).

    python -m vlm_ros.tools.regression test/bags/scenes_small --start-node --min-accuracy 0.6
    python -m vlm_ros.tools.regression my.bag --service /robot1/vlm/query     # against a running node

With --track the bag is a moving scene with per-frame truth (vlm_ros.tools.tracking_bag): a Track goal follows
what --instruction names while the bag plays, and its feedback is scored by vlm_ros.tools.tracking_metrics
(frames with IoU >= 0.5 per object, ID switches, re-acquisition, 3-D error) and its update rate:

    python -m vlm_ros.tools.tracking_bag /tmp/moving && python -m vlm_ros.tools.regression /tmp/moving --start-node \
        --track --min-hit-fraction 0.7 --max-id-switches 1

With --start-node the node runs in a subprocess (its own process group) with use_sim_time and its camera
topics taken from the bag's sidecar; otherwise a node must already be running with use_sim_time.
Questions are sent when the player has published the bag up to their time, without waiting for earlier answers.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from vlm_ros.core.types import Target
from vlm_ros.models.parsing import strip_loc_tokens
from vlm_ros.tools.bags import GroundTruth, InstructionTruth, load_groundtruth
from vlm_ros.tools.geometry_metrics import GeometryScore, GeometryTruth, score_target, summarize, summary_lines
from vlm_ros.tools.processes import PythonProcess, node_args
from vlm_ros.tools.stats import percentile
from vlm_ros.tools.track_goal import start_track
from vlm_ros.tools.tracking_bag import load_tracking_truth
from vlm_ros.tools.tracking_metrics import TrackingScore, score_tracking

NODE_TOPIC_PARAMS = {"image": "image_topic", "compressed": "compressed_topic", "camera_info": "camera_info_topic",
                     "depth": "depth_topic", "depth_info": "depth_info_topic"}


@dataclass
class Outcome:
    truth: InstructionTruth
    status: int = -1
    message: str = "no response"
    answer: str = ""
    correct: bool = False
    latency_s: float = float("nan")  # call to answer, as the caller sees it
    node_s: float = float("nan")  # the node's own timing (timings.total): queue wait to the targets' geometry
    ious: list[float] = field(default_factory=list)
    geometry: list[GeometryScore] = field(default_factory=list)  # per matched target
    targets: list[Target] = field(default_factory=list)


@dataclass
class Report:
    outcomes: list[Outcome]

    def accuracy(self, kinds: set[str] | None = None) -> float:
        chosen = [o for o in self.outcomes if kinds is None or o.truth.kind in kinds]
        return sum(o.correct for o in chosen) / len(chosen) if chosen else float("nan")

    @property
    def answered(self) -> float:
        """Fraction of questions answered OK from a frame of their own scene."""
        return sum(o.status == 0 for o in self.outcomes) / len(self.outcomes) if self.outcomes else float("nan")

    @property
    def grounding_accuracy(self) -> float:
        return self.accuracy({"ground", "list"})

    def latency(self, q: float, inside_node: bool = False) -> float:
        return percentile([o.node_s if inside_node else o.latency_s for o in self.outcomes if o.status >= 0], q)

    def geometry_summary(self) -> dict:
        return summarize([g for o in self.outcomes for g in o.geometry])

    def summary(self) -> str:
        kinds = sorted({o.truth.kind for o in self.outcomes})
        lines = [f"{'kind':10s} {'n':>3s} {'accuracy':>9s}"]
        for kind in kinds:
            n = sum(o.truth.kind == kind for o in self.outcomes)
            lines.append(f"{kind:10s} {n:3d} {self.accuracy({kind}):9.2f}")
        lines.append(f"answered OK from the right scene: {self.answered:.2f}")
        lines.append(f"overall accuracy {self.accuracy():.2f} over {len(self.outcomes)} questions; grounding "
                     f"(IoU >= 0.5) {self.grounding_accuracy:.2f}")
        lines += summary_lines(self.geometry_summary())
        lines.append(f"latency p50 {self.latency(0.5) * 1e3:.0f} ms, p95 {self.latency(0.95) * 1e3:.0f} ms "
                     f"(inside the node p50 {self.latency(0.5, True) * 1e3:.0f} ms, "
                     f"p95 {self.latency(0.95, True) * 1e3:.0f} ms)")
        return "\n".join(lines)


def normalise(text: str) -> str:
    return " ".join(strip_loc_tokens(text).lower().replace(",", " ").replace(".", " ").replace("?", " ").split())


def score(outcome: Outcome, gt: GroundTruth) -> None:
    """Fill `correct`, IoUs and 3-D errors of an outcome whose response fields are set."""
    truth = outcome.truth
    if outcome.status != 0:
        return
    if truth.kind in ("ground", "list"):
        scene = gt.scenes[truth.scene_index]
        unmatched = [i for i, t in enumerate(outcome.targets) if t.box is not None]  # point targets have no box
        for expected in truth.targets:
            best, best_iou = None, 0.0
            for i in unmatched:
                iou = expected.box.iou(outcome.targets[i].box)
                if iou > best_iou:
                    best, best_iou = i, iou
            outcome.ious.append(best_iou)
            if best is not None and best_iou >= 0.5:
                unmatched.remove(best)
                truth_3d = GeometryTruth.of(scene.objects[expected.object_index])
                outcome.geometry.append(score_target(outcome.targets[best], truth_3d, gt.width, gt.height))
        matched = all(iou >= 0.5 for iou in outcome.ious)
        outcome.correct = matched and (bool(truth.targets) or not outcome.targets)
    else:
        outcome.correct = normalise(outcome.answer) == normalise(truth.answer)


def start_node(gt: GroundTruth, model: str, params: list[str], log_path: Path | None) -> PythonProcess:
    """The perception node in its own process group, configured for the bag's topics and sim time."""
    topics = ["use_sim_time:=true"]
    for role, param in NODE_TOPIC_PARAMS.items():
        topic = gt.topics.get(role) or "''"  # '' = YAML empty string: no such stream in the bag
        topics.append(f"cameras.{gt.camera}.{param}:={topic}")
    if gt.camera != "front":
        topics += [f"cameras:=['{gt.camera}']", f"default_camera:={gt.camera}"]
    return PythonProcess(node_args(model, [*topics, *params]), log_path)


def run(bag: str | Path, *, service: str = "/vlm/query", rate: float = 1.0, timeout_s: float = 10.0,
        annotated_dir: Path | None = None, remap: dict[str, str] | None = None,
        on_outcome=None) -> Report:
    """Replay the bag and ask its questions. rclpy must be initialised; a node must serve `service`."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from vlm_ros.srv import Query
    from vlm_ros.tools.replay import BagPlayer

    gt = load_groundtruth(bag)
    node = rclpy.create_node("vlm_regression")
    player_node = rclpy.create_node("vlm_regression_player")
    executor = SingleThreadedExecutor()  # rclpy's multi-threaded one stalled answers here for up to 2.3 s
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    saved: list[Path] = []
    try:
        client = node.create_client(Query, service)
        if not client.wait_for_service(timeout_sec=60.0):
            raise RuntimeError(f"service {service} did not appear within 60 s")
        if annotated_dir is not None:
            annotated_dir.mkdir(parents=True, exist_ok=True)
            node.create_subscription(Image, service.rsplit("/", 1)[0] + "/annotated",
                                     lambda m: saved.append(_save_image(m, annotated_dir, len(saved))),
                                     qos_profile_sensor_data)
        player = BagPlayer(player_node, bag, rate=rate, remap=remap, wait_for_subscribers=1, wait_timeout=60.0)
        player.start()
        pending: list[tuple[Outcome, float, object]] = []
        for truth in sorted(gt.instructions, key=lambda t: t.ask_at_ns):
            # The player's own progress, not a subscribed /clock: that would lag when this process is busy.
            while (player.stats.bag_time_ns or 0) < truth.ask_at_ns and player._thread.is_alive():
                time.sleep(0.002)
            request = Query.Request(instruction=truth.instruction, ground=truth.ground, timeout_s=float(timeout_s))
            outcome, answered = Outcome(truth), threading.Event()
            sent = time.monotonic()  # before sending: the answer can come before call_async returns to this thread
            future = client.call_async(request)

            def on_done(f, o=outcome, t=sent, event=answered):
                o.latency_s = time.monotonic() - t
                event.set()

            future.add_done_callback(on_done)
            pending.append((outcome, sent, future, answered))
        outcomes = []
        for outcome, sent, future, answered in pending:
            if answered.wait(max(0.0, sent + timeout_s + 5.0 - time.monotonic())):
                _fill(outcome, future.result(), gt)
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
        player.wait(timeout=60.0)
        time.sleep(0.3)  # let the last annotated images arrive
    finally:
        executor.shutdown()
        node.destroy_node()
        player_node.destroy_node()
    return Report(outcomes)


def run_track(bag: str | Path, *, action: str = "/vlm/track", rate: float = 1.0,
              instruction: str = "detect all objects") -> tuple[TrackingScore, dict]:
    """Play a tracking bag while a Track goal runs; (its score, {"updates": tracker updates scored, "frames": the
    bag's frames})."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from vlm_ros.ros.convert import track_from_msg
    from vlm_ros.tools.replay import BagPlayer

    truth = load_tracking_truth(bag)
    node = rclpy.create_node("vlm_regression_track")
    player_node = rclpy.create_node("vlm_regression_player")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    feedback = []
    try:
        handle = start_track(node, feedback.append, instruction=instruction, action=action, server_timeout_s=60.0)
        player = BagPlayer(player_node, bag, rate=rate, wait_for_subscribers=1, wait_timeout=60.0)
        player.start()
        player.wait(timeout=600.0)
        time.sleep(0.5)
        handle.cancel_goal_async()
    finally:
        executor.shutdown()
        node.destroy_node()
        player_node.destroy_node()
    by_stamp = dict(truth.frames)
    frames = []
    for f in feedback:
        stamp = f.header.stamp.sec * 1_000_000_000 + f.header.stamp.nanosec
        if stamp in by_stamp:
            frames.append((stamp / 1e9, by_stamp[stamp], [track_from_msg(t, stamp) for t in f.tracks]))
    return score_tracking(frames), {"updates": len(frames), "frames": len(truth.frames)}


def _fill(outcome: Outcome, resp, gt: GroundTruth) -> None:
    from vlm_ros.ros.convert import target_from_msg
    outcome.status, outcome.message, outcome.answer = resp.status, resp.message, resp.answer
    outcome.node_s = resp.timings.total
    stamp = resp.header.stamp.sec * 1_000_000_000 + resp.header.stamp.nanosec
    scene = gt.scenes[outcome.truth.scene_index]
    outcome.targets = [target_from_msg(t) for t in resp.targets]
    if outcome.status == 0 and not scene.start_ns <= stamp < scene.end_ns:
        outcome.message = "answered from a frame of another scene"
        outcome.status = -2
    score(outcome, gt)


def _save_image(msg, folder: Path, index: int) -> Path:
    """annotated_<index>_<stamp>.png: the index-th answer's image (in the order answered); answers from one
    frame share its stamp."""
    import cv2
    import numpy as np

    rgb = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3)
    path = folder / f"annotated_{index:02d}_{msg.header.stamp.sec}_{msg.header.stamp.nanosec:09d}.png"
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def print_outcome(o: Outcome) -> None:
    mark = "ok " if o.correct else "BAD"
    print(f"[{mark}] {o.truth.instruction!r} -> {o.answer!r} (expected {strip_loc_tokens(o.truth.answer)!r}), "
          f"{o.latency_s * 1e3:.0f} ms ({o.node_s * 1e3:.0f} ms in the node)"
          + ("" if o.status == 0 else f", status {o.status}: {o.message}"))
    for t in o.targets:
        where = (f"box ({t.box.x_min:.0f}, {t.box.y_min:.0f}, {t.box.x_max:.0f}, {t.box.y_max:.0f}) px"
                 if t.box is not None else f"point ({t.point[0]:.0f}, {t.point[1]:.0f}) px")
        if t.mask is not None:
            where += f", mask {t.mask.area} px ({t.mask.source})"
        if t.position is not None:
            where += f", 3-D ({t.position[0]:+.3f}, {t.position[1]:+.3f}, {t.position[2]:.3f}) m"
        if t.shape is not None:
            size = ", ".join(f"{v * 100:.1f}" for v in t.shape.size)
            where += f", extent ({size}) cm, {t.shape.valid_points} points, {t.shape.method.value}"
        print(f"        target {t.label!r}: {where}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bag")
    parser.add_argument("--service", default="/vlm/query")
    parser.add_argument("--rate", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=10.0, help="per-question timeout_s sent to the node")
    parser.add_argument("--start-node", action="store_true", help="run the node in a subprocess for the bag")
    parser.add_argument("--model", default="", help="with --start-node: model directory ('' = embedded default)")
    parser.add_argument("--node-param", action="append", default=[], metavar="NAME:=VALUE")
    parser.add_argument("--annotated-dir", type=Path, help="save the node's annotated images here")
    parser.add_argument("--min-answered", type=float, default=0.0,
                        help="fraction of questions that must be answered OK from a frame of their own scene")
    parser.add_argument("--min-accuracy", type=float, default=0.0)
    parser.add_argument("--min-grounding", type=float, default=0.0)
    parser.add_argument("--max-p95-latency", type=float, default=float("inf"), help="seconds")
    parser.add_argument("--min-mask-iou", type=float, default=0.0,
                        help="median mask IoU of the matched targets (targets without a mask count as 0)")
    parser.add_argument("--max-centroid-error", type=float, default=float("inf"),
                        help="median 3-D centroid error of the matched targets, metres (targets without 3-D: inf)")
    parser.add_argument("--track", action="store_true", help="a tracking bag: score a Track goal (see above)")
    parser.add_argument("--action", default="/vlm/track", help="with --track: the Track action")
    parser.add_argument("--instruction", default="detect all objects", help="with --track: the goal's instruction")
    parser.add_argument("--min-hit-fraction", type=float, default=0.0,
                        help="with --track: frames with IoU >= 0.5, the worst object's share")
    parser.add_argument("--max-id-switches", type=float, default=float("inf"), help="with --track: per 300 frames")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    import rclpy

    if args.track:
        return _main_track(args)

    gt = load_groundtruth(args.bag)
    node = None
    if args.start_node:
        if args.annotated_dir:
            args.annotated_dir.mkdir(parents=True, exist_ok=True)
        log = args.annotated_dir / "node.log" if args.annotated_dir else None
        node = start_node(gt, args.model, args.node_param, log)
    rclpy.init(args=[])  # our own arguments are not ROS arguments
    try:
        report = run(args.bag, service=args.service, rate=args.rate, timeout_s=args.timeout,
                     annotated_dir=args.annotated_dir, on_outcome=None if args.quiet else print_outcome)
    finally:
        rclpy.try_shutdown()
        if node is not None:
            node.stop()
    print(report.summary())
    if args.annotated_dir:
        print(f"annotated images: {args.annotated_dir}")
    failures = []
    if not report.answered >= args.min_answered:
        failures.append(f"answered {report.answered:.2f} < {args.min_answered}")
    if not report.accuracy() >= args.min_accuracy:
        failures.append(f"accuracy {report.accuracy():.2f} < {args.min_accuracy}")
    if not report.grounding_accuracy >= args.min_grounding:
        failures.append(f"grounding accuracy {report.grounding_accuracy:.2f} < {args.min_grounding}")
    if not report.latency(0.95) <= args.max_p95_latency:
        failures.append(f"p95 latency {report.latency(0.95):.2f} s > {args.max_p95_latency} s")
    scores = [g for o in report.outcomes for g in o.geometry]
    if args.min_mask_iou > 0:
        iou = statistics.median([s.mask_iou or 0.0 for s in scores]) if scores else 0.0
        if not iou >= args.min_mask_iou:
            failures.append(f"median mask IoU {iou:.3f} < {args.min_mask_iou}")
    if args.max_centroid_error < float("inf"):
        errors = [s.centroid_error_m if s.centroid_error_m is not None else float("inf") for s in scores]
        error = statistics.median(errors) if errors else float("inf")
        if not error <= args.max_centroid_error:
            failures.append(f"median 3-D centroid error {error:.4f} m > {args.max_centroid_error} m")
    for f in failures:
        print(f"FAIL: {f}")
    return 1 if failures else 0


def _main_track(args) -> int:
    import rclpy

    truth = load_tracking_truth(args.bag)
    node = start_node(truth, args.model, args.node_param, None) if args.start_node else None
    rclpy.init(args=[])
    try:
        score, stats = run_track(args.bag, action=args.action, rate=args.rate, instruction=args.instruction)
    finally:
        rclpy.try_shutdown()
        if node is not None:
            node.stop()
    print("\n".join(score.lines()))
    print(f"{stats['updates']} tracker updates for {stats['frames']} bag frames ({score.update_rate_hz:.1f} Hz)")
    worst = min((o.hit_fraction for o in score.objects if o.visible_frames), default=0.0)
    failures = []
    if not worst >= args.min_hit_fraction:
        failures.append(f"worst object's frames with IoU >= 0.5 {worst:.2f} < {args.min_hit_fraction}")
    if not score.id_switches_per_300_frames <= args.max_id_switches:
        failures.append(f"ID switches per 300 frames {score.id_switches_per_300_frames:.2f} > {args.max_id_switches}")
    errors = score.errors_3d
    if args.max_centroid_error < float("inf") and not (errors and statistics.median(errors) <= args.max_centroid_error):
        failures.append(f"median 3-D error {statistics.median(errors) if errors else float('inf'):.4f} m > "
                        f"{args.max_centroid_error} m")
    for f in failures:
        print(f"FAIL: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
