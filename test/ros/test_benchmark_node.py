"""The node benchmark runs end to end against a real node process (tiny model) and writes its record and chart.

Timings are not judged (the benchmark prints them); what it measured must be there and make sense.
"""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import pytest
from conftest import REPO, requires_ros

pytestmark = requires_ros


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from vlm_ros.testing.tiny import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


def test_node_benchmark_measures_ingest_and_queries(tiny_model, tmp_path):
    record, chart = tmp_path / "node.json", tmp_path / "node.png"
    done = subprocess.run([sys.executable, "-m", "vlm_ros.tools.benchmark_node", "--model", str(tiny_model),
                           "--rates", "30", "--queries", "4", "--tokens", "4", "--node-param", "cpu_threads:=2",
                           "--json", str(record),
                           "--plot", str(chart)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    results = json.loads(record.read_text())
    runs = {(r["resolution"], r["encoding"]): r for r in results["ingest"]}
    assert ("640x480", "rgb8") in runs and ("640x480", "jpeg") in runs
    for r in runs.values():
        assert 0 < r["delivered"] <= 1.0 and r["callback_ms"] > 0 and r["node_cpu_ms_per_frame_gross"] > 0
        assert r["node_cpu_ms_per_frame"] <= r["node_cpu_ms_per_frame_gross"]  # the idle rate taken off
    q = results["queries"]
    assert q["n"] == 4 and 0 < q["p50_s"] <= q["p95_s"] <= q["p99_s"] < 30
    assert 0 < q["tokens_mean"] <= 4 and 0 < q["camera_delivered"] <= 1.0 and q["frame_age_max_s"] < 10
    assert 0 < q["node_decode_p50_s"] < q["node_total_p50_s"] and q["node_rss_mb"] > 50
    assert q["node_cpu_threads"] == "2" and results["node_params"] == ["cpu_threads:=2"]  # the parameter reached torch
    image = cv2.imread(str(chart))
    assert image is not None and (image < 250).any()
    assert "camera frames delivered meanwhile" in done.stdout
