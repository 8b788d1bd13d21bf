"""vlm_ros.tools.geometry_metrics: the measures the evaluate tool and the regression harness report."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vlm_ros.core.types import Box, GeometryMethod, Mask, Shape3D, Target
from vlm_ros.tools.geometry_metrics import GeometryScore, GeometryTruth, score_target, summarize, summary_lines

TRUTH = GeometryTruth(mask=Mask(10, 10, np.ones((10, 10), bool), "truth"), surface_centroid=(0.0, 0.0, 1.0),
                      surface_min=(-0.05, -0.05, 0.98), surface_max=(0.05, 0.05, 1.02), object_center=(0.0, 0.0, 1.05))


def test_scores_of_a_target_by_hand() -> None:
    # the mask covers the truth's right half and 5 x 10 pixels beside it: IoU 50 / 150
    target = Target("x", Box(15, 10, 25, 20), mask=Mask(15, 10, np.ones((10, 10), bool), "depth_layer"),
                    position=(0.03, 0.0, 1.04),
                    shape=Shape3D((-0.05, -0.04, 0.98), (0.08, 0.05, 1.02), 50, 1.0, GeometryMethod.DEPTH_LAYER))
    score = score_target(target, TRUTH, 64, 48)
    assert score.mask_iou == pytest.approx(50 / 150)
    assert score.centroid_error_m == pytest.approx(math.hypot(0.03, 0.04))
    assert score.extent_error_m == pytest.approx((0.03, 0.01, 0.0))  # the worse face per axis
    assert score.center_error_m == pytest.approx(math.hypot(0.03, 0.01))


def test_missing_mask_or_3d_gives_none_and_summaries_count_what_there_is() -> None:
    bare = score_target(Target("x", Box(0, 0, 5, 5)), TRUTH, 64, 48)
    assert bare == GeometryScore(None, None, None, None)
    old_sidecar = GeometryTruth(None, None, None, None, None)
    full = Target("x", Box(10, 10, 20, 20), mask=TRUTH.mask, position=(0.0, 0.0, 1.0),
                  shape=Shape3D((-0.05, -0.05, 0.98), (0.05, 0.05, 1.02), 100, 1.0, GeometryMethod.DEPTH_LAYER))
    assert score_target(full, old_sidecar, 64, 48) == GeometryScore(None, None, None, None)
    exact = score_target(full, TRUTH, 64, 48)
    assert exact.mask_iou == 1.0 and exact.centroid_error_m == 0.0 and exact.extent_error_m == (0.0, 0.0, 0.0)
    summary = summarize([bare, exact, exact])
    assert summary["targets"] == 3 and summary["mask_iou"] == {"median": 1.0, "p10": 1.0, "n": 2}
    assert summary["extent_error_m"]["z"]["n"] == 2
    lines = summary_lines(summary)
    assert lines[0] == "mask IoU of matched targets: median 1.000, p10 1.000 (2 of 3 with a mask)"
    assert summary_lines(summarize([bare])) == []
