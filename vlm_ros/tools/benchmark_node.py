"""Node benchmark over DDS on loopback: image ingest and end-to-end /vlm/query latency.

    python -m vlm_ros.tools.benchmark_node [--model DIR] [--json out.json] [--plot out.png]

1. Ingest: a rendered table-top scene published at increasing rates (640x480 and 1920x1080; rgb8 Image and
   jpeg CompressedImage) for a few seconds each; the node's diagnostics say how many it received and the time
   of its image callback (decode + validation). Reported per rate: delivered fraction, callback ms per frame,
   and the node process's whole CPU time per received frame (DDS, deserialisation, executor and callback, from
   /proc, less the node's idle CPU rate measured first).
2. Queries: sequential /vlm/query calls on a 640x480 camera at 30 Hz: latency p50/p95/p99, tokens, the age
   of the frame used (call time - stamp of the image the answer used), and the fraction of the camera's frames
   the node received while it answered.
The node runs in a subprocess on this machine with ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time

import numpy as np

from vlm_ros.core.images import encode_compressed
from vlm_ros.tools.plot import bar_chart
from vlm_ros.tools.processes import PythonProcess, cpu_seconds, node_args
from vlm_ros.tools.stats import percentile
from vlm_ros.tools.track_goal import start_track, wait_future

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))

RESOLUTIONS = {"640x480": (480, 640), "1920x1080": (1080, 1920)}


def scene_image(resolution: str) -> np.ndarray:
    """A rendered table-top scene at `resolution` (JPEG sizes and decode times like a camera's, unlike noise)."""
    from vlm_ros.embedded.scenes import render_scene

    h, w = RESOLUTIONS[resolution]
    return render_scene(seed=7, width=w, height=h).image


class Bench:
    def __init__(self, model: str, publisher_qos: str, node_params: list[str] = ()):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, qos_profile_sensor_data
        from sensor_msgs.msg import CompressedImage, Image

        from vlm_ros.srv import Query

        self.process = PythonProcess(node_args(model, ["cameras.front.compressed_topic:=camera/image_raw/compressed",
                                                       "diagnostics_period_s:=0.2", *node_params]))
        rclpy.init()
        self.node = rclpy.create_node("vlm_benchmark")
        self.executor = SingleThreadedExecutor()  # short callbacks only (see vlm_ros.ros.node.CameraIngest)
        self.executor.add_node(self.node)
        threading.Thread(target=self.executor.spin, daemon=True).start()
        qos = qos_profile_sensor_data if publisher_qos == "best_effort" else QoSProfile(depth=5)  # reliable
        self.raw = self.node.create_publisher(Image, "/camera/image_raw", qos)
        self.jpeg = self.node.create_publisher(CompressedImage, "/camera/image_raw/compressed", qos)
        self.Image, self.CompressedImage = Image, CompressedImage
        self.camera: dict[str, str] = {}
        self.model: dict[str, str] = {}
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.client = self.node.create_client(Query, "/vlm/query")
        self.Query = Query
        if not self.client.wait_for_service(timeout_sec=60):
            raise RuntimeError("the node did not start")
        deadline = time.monotonic() + 120
        while self._call(self.Query.Request()).status == self.Query.Response.NOT_READY:  # model still loading
            if time.monotonic() > deadline:
                raise RuntimeError("the node did not become active")
            time.sleep(0.2)

    def _call(self, request):
        return wait_future(self.client.call_async(request))

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if status.name == "vlm: camera front":
                self.camera = values
            elif status.name == "vlm: model":
                self.model = values

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown()
        self.process.stop(15)

    def _message(self, image: np.ndarray, encoding: str):
        from vlm_ros.ros.convert import make_header

        header = make_header(self.node.get_clock().now().nanoseconds, "camera_optical_frame")
        if encoding == "jpeg":
            format_string, data = encode_compressed(image, "jpeg")
            return self.jpeg, self.CompressedImage(header=header, format=format_string, data=data)
        h, w = image.shape[:2]
        return self.raw, self.Image(header=header, height=h, width=w, encoding="rgb8", step=w * 3,
                                    data=image.tobytes())

    def idle_cpu_rate(self, seconds: float = 3.0) -> float:
        """The node's CPU seconds per second with no frames (timers, diagnostics)."""
        c0, t0 = cpu_seconds(self.process.pid), time.monotonic()
        time.sleep(seconds)
        return (cpu_seconds(self.process.pid) - c0) / (time.monotonic() - t0)

    def received(self) -> int:
        time.sleep(0.5)  # two diagnostics periods: the count is current
        return int(self.camera.get("received", 0))

    def ingest(self, resolution: str, encoding: str, rate: float, idle_rate: float, seconds: float = 3.0) -> dict:
        publisher, msg = self._message(scene_image(resolution), encoding)
        before = self.received()
        cpu0 = cpu_seconds(self.process.pid)
        sent, start = 0, time.monotonic()
        while time.monotonic() - start < seconds:
            msg.header.stamp = self.node.get_clock().now().to_msg()
            publisher.publish(msg)
            sent += 1
            time.sleep(max(0.0, start + sent / rate - time.monotonic()))
        elapsed = time.monotonic() - start
        got = self.received() - before
        cpu = cpu_seconds(self.process.pid) - cpu0
        idle = idle_rate * (time.monotonic() - start)
        # net of the idle rate (timers, diagnostics): for small frames, within that rate's noise (can be <= 0)
        return {"resolution": resolution, "encoding": encoding, "target_hz": rate, "sent_hz": sent / elapsed,
                "received_hz": got / elapsed, "delivered": got / max(sent, 1),
                "callback_ms": float(self.camera.get("callback_ms", "nan")),
                "node_cpu_ms_per_frame": 1e3 * (cpu - idle) / max(got, 1),
                "node_cpu_ms_per_frame_gross": 1e3 * cpu / max(got, 1)}

    def start_track(self):
        """A Track goal ("detect all objects") on the camera; its goal handle (cancel: cancel_goal_async)."""
        self.track_updates = 0

        def on_feedback(_feedback) -> None:
            self.track_updates += 1

        return start_track(self.node, on_feedback)

    def queries(self, n: int, tokens: int, track: bool = False) -> dict:
        """Sequential queries on a 30 Hz camera; with `track`, while a Track goal follows the scene."""
        image = scene_image("640x480")
        stop = threading.Event()
        sent = 0

        def camera():
            nonlocal sent
            publisher, msg = self._message(image, "rgb8")
            while not stop.is_set():
                msg.header.stamp = self.node.get_clock().now().to_msg()
                publisher.publish(msg)
                sent += 1
                time.sleep(1 / 30)

        received_before = self.received()  # the camera is quiet: an exact count
        publishing = threading.Thread(target=camera, daemon=True)
        publishing.start()
        latencies, ages, generated, inside = [], [], [], []
        goal, t_track = None, time.monotonic()
        try:
            time.sleep(1.0)
            if track:
                goal = self.start_track()
                time.sleep(1.0)  # the first grounding, and the new action client's feedback subscription matching
                t_track, self.track_updates = time.monotonic(), 0
            for _ in range(n + 2):
                sent_ns = self.node.get_clock().now().nanoseconds
                t0 = time.monotonic()
                resp = self._call(self.Query.Request(instruction="describe the scene", max_new_tokens=tokens))
                if resp.status != 0:
                    raise RuntimeError(f"query failed: {resp.status} {resp.message}")
                latencies.append(time.monotonic() - t0)
                ages.append((sent_ns - (resp.header.stamp.sec * 10**9 + resp.header.stamp.nanosec)) / 1e9)
                generated.append(resp.timings.generated_tokens)
                inside.append((resp.timings.total, resp.timings.decode))
        finally:
            track_hz = self.track_updates / (time.monotonic() - t_track) if goal is not None else float("nan")
            if goal is not None:
                goal.cancel_goal_async()
            stop.set()
            publishing.join()
        delivered = (self.received() - received_before) / max(sent, 1)  # frames the queries' load let through
        latencies, ages, generated, inside = latencies[2:], ages[2:], generated[2:], inside[2:]  # two warm-ups
        return {"n": n, "p50_s": percentile(latencies, 0.5), "p95_s": percentile(latencies, 0.95),
                "p99_s": percentile(latencies, 0.99), "tokens_mean": statistics.mean(generated),
                "frame_age_p50_s": percentile(ages, 0.5), "frame_age_max_s": max(ages), "camera_delivered": delivered,
                "node_total_p50_s": percentile([t for t, _ in inside], 0.5),  # the node's own timing of a query
                "node_decode_p50_s": percentile([d for _, d in inside], 0.5),
                "node_rss_mb": float(self.model.get("rss_mb", "nan")),
                "node_cpu_threads": self.model.get("cpu_threads"), "track_updates_hz": track_hz}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="model directory ('' = the embedded default model)")
    parser.add_argument("--rates", default="15,30,60,120", help="ingest rates to try, Hz")
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--publisher-qos", choices=("reliable", "best_effort"), default="reliable",
                        help="the camera publishers' reliability (the node follows it where rclpy can)")
    parser.add_argument("--node-param", action="append", default=[], metavar="NAME:=VALUE",
                        help="a further node parameter, e.g. cpu_threads:=0")
    parser.add_argument("--with-track", action="store_true",
                        help="then the same queries again while a Track goal runs (its update rate, the query latency "
                             "and the frames delivered beside it)")
    parser.add_argument("--json")
    parser.add_argument("--plot", help="write a PNG bar chart of the results here")
    args = parser.parse_args(argv)
    bench = Bench(args.model, args.publisher_qos, args.node_param)
    results: dict = {"ingest": [], "machine": f"{os.cpu_count()} CPUs", "publisher_qos": args.publisher_qos,
                     "node_params": args.node_param}
    try:
        idle_rate = results["node_idle_cpu"] = bench.idle_cpu_rate()
        for resolution in RESOLUTIONS:
            for encoding in ("rgb8", "jpeg"):
                for rate in (float(r) for r in args.rates.split(",")):
                    r = bench.ingest(resolution, encoding, rate, idle_rate)
                    results["ingest"].append(r)
                    print(f"ingest {resolution} {encoding:4s} target {rate:5.0f} Hz: sent {r['sent_hz']:6.1f}, "
                          f"received {r['received_hz']:6.1f} Hz ({r['delivered']:.0%}), "
                          f"callback {r['callback_ms']:.2f} ms, node CPU {r['node_cpu_ms_per_frame']:.2f} ms per frame "
                          f"net of idle ({r['node_cpu_ms_per_frame_gross']:.2f} gross)")
                    if r["delivered"] < 0.95:
                        break
        q = bench.queries(args.queries, args.tokens)
        results["queries"] = q
        print(f"/vlm/query over DDS, 640x480 camera at 30 Hz, {q['tokens_mean']:.1f} tokens: "
              f"p50 {q['p50_s'] * 1e3:.0f} ms, p95 {q['p95_s'] * 1e3:.0f} ms, p99 {q['p99_s'] * 1e3:.0f} ms; "
              f"frame age p50 {q['frame_age_p50_s'] * 1e3:.0f} ms, max {q['frame_age_max_s'] * 1e3:.0f} ms; "
              f"inside the node p50 {q['node_total_p50_s'] * 1e3:.0f} ms "
              f"(decode {q['node_decode_p50_s'] * 1e3:.0f} ms); "
              f"camera frames delivered meanwhile {q['camera_delivered']:.0%}; node peak RSS {q['node_rss_mb']:.0f} MB")
        if args.with_track:
            time.sleep(1.0)
            t = results["queries_while_tracking"] = bench.queries(args.queries, args.tokens, track=True)
            print(f"the same while a Track goal runs: p50 {t['p50_s'] * 1e3:.0f} ms "
                  f"({t['p50_s'] / q['p50_s'] - 1:+.0%}), p95 {t['p95_s'] * 1e3:.0f} ms; "
                  f"camera frames delivered {t['camera_delivered']:.0%}; track feedback {t['track_updates_hz']:.1f} Hz")
    finally:
        bench.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    if args.plot:
        runs = [(f"{r['resolution']} {r['encoding']} @ {r['target_hz']:.0f} Hz", r) for r in results["ingest"]]
        q = results.get("queries", {})
        bar_chart(args.plot, f"node over DDS (loopback), {args.publisher_qos} publishers, {results['machine']}", [
            ("ingest: received Hz", [(name, r["received_hz"]) for name, r in runs]),
            ("ingest: node CPU ms per received frame", [(name, r["node_cpu_ms_per_frame"]) for name, r in runs]),
            ("/vlm/query latency ms (640x480 camera at 30 Hz)",
             [(p, q.get(f"{p}_s", float("nan")) * 1e3) for p in ("p50", "p95", "p99")])])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
