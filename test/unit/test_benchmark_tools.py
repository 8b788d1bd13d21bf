"""The benchmark commands run end to end on a tiny model and write their JSON record and PNG chart.

Timings are not judged here (targets live in the benchmarks' printed ratios); the records and charts are.
"""

from __future__ import annotations

import json
import math
import os
import time

import cv2
import numpy as np
import pytest

from vlm_ros.tools import benchmark_engine
from vlm_ros.tools.plot import bar_chart
from vlm_ros.tools.processes import PythonProcess, node_args


def test_engine_benchmark_writes_json_and_png(tmp_path):
    record, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    assert benchmark_engine.main(["--model", "tiny-llava", "--tokens", "4", "--repeats", "1", "--skip-static",
                                  "--json", str(record), "--plot", str(chart)]) == 0
    results = json.loads(record.read_text())["results"]
    for name in ("engine", "generate (dynamic cache)"):
        assert results[name]["decode_tok_s"] > 0 and results[name]["ttft_s"] > 0
    assert results["engine"]["options"] == "default" and results["peak_rss_mb"] > 50
    image = cv2.imread(str(chart))
    assert image is not None and image.shape[1] == 960 and (image < 250).any()


def test_bar_chart_scales_bars_to_the_largest_and_marks_missing_values(tmp_path):
    path = bar_chart(tmp_path / "c.png", "t", [("metric", [("a", 10.0), ("b", 5.0), ("c", math.nan)])])
    image = cv2.imread(str(path))
    bar_colour = np.array([180, 110, 40])
    rows = [np.where((image[y] == bar_colour).all(-1))[0] for y in range(image.shape[0])]
    lengths = sorted({len(r) for r in rows if len(r)}, reverse=True)
    assert len(lengths) == 2 and abs(lengths[0] / lengths[1] - 2.0) < 0.02  # a is twice b; c has no bar


def test_node_args_start_the_node_module_with_its_parameters():
    assert node_args("", ["device:=cpu"]) == ["-m", "vlm_ros.ros.node", "--ros-args", "-p", "model:=''",
                                             "-p", "device:=cpu"]
    assert node_args("/m", ()) == ["-m", "vlm_ros.ros.node", "--ros-args", "-p", "model:=/m"]
    assert node_args() == ["-m", "vlm_ros.ros.node", "--ros-args"]


def test_python_process_logs_waits_and_stops_its_whole_group(tmp_path):
    script = ("import subprocess, sys, time\n"
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              "print('ready', flush=True)\n"
              "time.sleep(60)\n")
    child = PythonProcess(["-c", script], tmp_path / "child.log")
    child.wait_for_log("ready", 30)
    assert child.stop(10) != 0 and "ready" in child.log()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the grandchild got the signal too (same process group)
        try:
            os.killpg(child.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("a process of the group outlived stop()")
    failing = PythonProcess(["-c", "raise SystemExit(3)"], tmp_path / "failing.log")
    with pytest.raises(RuntimeError, match="exited with 3"):
        failing.wait_for_log("never printed", 30)
    failing.stop()



def test_the_tracking_benchmark_can_feed_frames_as_a_tracking_bag_carries_them():
    from vlm_ros.tools.benchmark_tracking import as_recorded

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    depth = rng.uniform(0.5, 2.0, (48, 64)).astype(np.float32)
    same_image, same_depth = as_recorded(image, depth, 0, 1)
    assert same_image is image and same_depth is depth
    jpeg, small = as_recorded(image, depth, 80, 4)
    assert jpeg.shape == image.shape and jpeg.dtype == np.uint8 and not np.array_equal(jpeg, image)
    assert small.shape == (12, 16) and np.allclose(small * 1000.0, np.round(small * 1000.0), atol=1e-3)
    assert np.allclose(small, depth[::4, ::4], atol=5e-4)  # nearest: one of the pixels of each 4x4 block
