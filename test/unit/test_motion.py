"""The moving-scene renderer's per-frame truth (vlm_ros.embedded.motion): boxes, visibility, 3-D, determinism."""

import numpy as np
import pytest

from vlm_ros.core.geometry import backproject
from vlm_ros.embedded.motion import MotionRenderer, default_script


@pytest.fixture(scope="module")
def renderer():
    return MotionRenderer(default_script(), 320, 240)


def by_label(frame):
    return {o.label: o for o in frame.objects}


def test_truth_agrees_with_the_rendered_labels_and_depth(renderer):
    frame = renderer.render(0.5, 15)
    assert frame.image.shape == (240, 320, 3) and frame.depth.shape == (240, 320)
    for o in frame.objects:
        vs, us = np.nonzero(frame.labels == o.object_id)
        if o.box is None:
            assert len(vs) == 0 and o.visible_fraction == 0.0
            continue
        assert (o.box.x_min, o.box.y_min, o.box.x_max, o.box.y_max) == (us.min(), vs.min(), us.max() + 1, vs.max() + 1)
        assert o.mask.area == len(vs)
        centroid = np.mean(np.stack(backproject(us, vs, frame.depth[vs, us].astype(np.float64), frame.intrinsics)),
                           axis=1)
        assert np.allclose(centroid, o.surface_centroid)
        assert 0.3 < o.surface_centroid[2] < 2.0  # on the table, in front of the wall


def test_the_script_hides_the_ball_and_takes_the_star_out_of_view_and_back(renderer):
    seen = {t: by_label(renderer.render(t, int(t * 30))) for t in (0.0, 2.0, 4.0, 5.5)}
    assert seen[0.0]["blue ball"].visible_fraction == 1.0 and seen[0.0]["green star"].visible_fraction == 1.0
    assert seen[2.0]["green star"].box is None  # out of view on the right
    assert seen[4.0]["blue ball"].box is None  # behind the yellow cube
    assert seen[4.0]["yellow cube"].visible_fraction == 1.0
    assert seen[5.5]["blue ball"].visible_fraction == 1.0 and seen[5.5]["green star"].visible_fraction > 0.9
    assert seen[5.5]["red cube"].box.x_min > seen[0.0]["red cube"].box.x_min  # it slid right


def test_rendering_is_a_function_of_time_and_frame_index(renderer):
    a, b = renderer.render(1.0, 30), renderer.render(1.0, 30)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.depth, b.depth)
    assert not np.array_equal(a.image, renderer.render(1.0, 31).image)  # other sensor noise
