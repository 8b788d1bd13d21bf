"""The renderer: determinism and ground truth that agrees with the pixels, the depth and the intrinsics."""

from __future__ import annotations

import numpy as np
import pytest

from vlm_ros.embedded.scenes import COLORS, MIN_VISIBLE, PARTIAL_MIN_VISIBLE, SHAPES, SIZES, render_scene

SEEDS = range(12)


@pytest.fixture(scope="module")
def scenes():
    return [render_scene(s) for s in SEEDS]


def test_vocabulary_sizes():
    assert len(SHAPES) >= 5 and len(COLORS) == 8 and 2 <= len(SIZES) <= 3


def test_same_seed_same_scene():
    a, b = render_scene(7), render_scene(7)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.depth, b.depth)
    assert a.objects == b.objects


def test_different_seeds_differ():
    a, b = render_scene(1), render_scene(2)
    assert not np.array_equal(a.image, b.image)


def test_image_depth_types(scenes):
    for s in scenes:
        assert s.image.shape == (480, 640, 3) and s.image.dtype == np.uint8
        assert s.depth.shape == (480, 640) and s.depth.dtype == np.float32
        assert np.isfinite(s.depth).all()
        assert 0.4 < s.depth.min() and s.depth.max() < 3.5
        assert 1 <= len(s.objects) <= 6
        assert s.intrinsics.valid


def test_n_objects_is_honoured():
    for n in (0, 1, 4, 6):
        assert len(render_scene(100 + n, n_objects=n).objects) == n


def test_vocab_of_objects(scenes):
    for s in scenes:
        for o in s.objects:
            assert o.shape in SHAPES and o.color in COLORS and o.size in SIZES


def test_box_is_the_extent_of_the_visible_mask(scenes):
    for s in scenes:
        for i, o in enumerate(s.objects):
            vs, us = np.nonzero(s.labels == i)
            assert len(vs) > 0
            assert (o.box.x_min, o.box.y_min, o.box.x_max, o.box.y_max) == (
                us.min(),
                vs.min(),
                us.max() + 1,
                vs.max() + 1,
            )


def test_every_object_mostly_visible(scenes):
    for s in scenes:
        for o in s.objects:
            assert o.visible_fraction >= MIN_VISIBLE


def test_unoccluded_objects_are_big_enough_to_ground(scenes):
    seen = 0
    for s in scenes:
        for o in s.objects:
            if o.visible_fraction == 1.0:
                seen += 1
                assert o.box.height >= 50, o
    assert seen > 5


def test_position_agrees_with_depth_and_intrinsics(scenes):
    """Back-projecting the box centre at the object's median depth gives its position within 2 cm."""
    for s in scenes:
        k = s.intrinsics
        for i, o in enumerate(s.objects):
            z = float(np.median(s.depth[s.labels == i]))
            u, v = o.box.center
            expect = ((u - k.cx) * z / k.fx, (v - k.cy) * z / k.fy, z)
            assert np.allclose(o.position, expect, atol=0.02), (o, expect)
            # and the visible surface is within a few cm of that depth around the box centre
            uc, vc = int(u), int(v)
            patch = s.depth[max(vc - 3, 0) : vc + 4, max(uc - 3, 0) : uc + 4]
            mine = s.labels[max(vc - 3, 0) : vc + 4, max(uc - 3, 0) : uc + 4] == i
            if mine.any():
                assert abs(float(np.median(patch[mine])) - o.position[2]) < 0.08


def test_objects_are_nearer_than_the_surface_behind_them(scenes):
    for s in scenes:
        bg = s.labels < 0
        for i, o in enumerate(s.objects):
            top = int(o.box.y_min)
            if top < 3:
                continue
            x0, x1 = int(o.box.x_min), int(o.box.x_max)
            band = s.depth[top - 3 : top, x0:x1][bg[top - 3 : top, x0:x1]]
            if band.size:
                assert float(np.median(s.depth[s.labels == i])) < float(np.median(band))


def test_other_resolution():
    s = render_scene(3, width=320, height=240)
    assert s.image.shape == (240, 320, 3)
    assert all(o.box.x_max <= 320 and o.box.y_max <= 240 for o in s.objects)


def test_partial_scenes_cut_objects_at_the_sides_and_hide_more():
    """Partial scenes (training for a moving camera): objects cut by the left/right border or mostly hidden,
    still at least PARTIAL_MIN_VISIBLE visible, boxes the extent of what is visible, sizes the whole object's."""
    cut = hidden = 0
    for seed in range(40):
        s = render_scene(seed, partial=True)
        for i, o in enumerate(s.objects):
            vs, us = np.nonzero(s.labels == i)
            extent = (us.min(), vs.min(), us.max() + 1, vs.max() + 1)
            assert (o.box.x_min, o.box.y_min, o.box.x_max, o.box.y_max) == extent
            assert PARTIAL_MIN_VISIBLE <= o.visible_fraction <= 1.0
            hidden += o.visible_fraction < MIN_VISIBLE
            visible_width_m = o.box.width * o.object_center[2] / s.intrinsics.fx
            cut += (o.box.x_min == 0 or o.box.x_max == s.width) and o.object_size[0] > 1.1 * visible_width_m
    assert cut >= 5 and hidden >= 5, (cut, hidden)
