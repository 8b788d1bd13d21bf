"""vlm_ros.core.geometry: intrinsics, back-projection and box -> 3-D point on synthetic scenes."""

from __future__ import annotations

import array
import math

import numpy as np
import pytest

from vlm_ros.core.geometry import backproject, intrinsics_from_k, target_position
from vlm_ros.core.types import Box, CameraIntrinsics

K = CameraIntrinsics(fx=525.0, fy=520.0, cx=319.5, cy=239.5)
W, H = 640, 480


def project(x: float, y: float, z: float, k: CameraIntrinsics = K) -> tuple[float, float]:
    """Pixel (K's centre convention) of a camera-frame point."""
    return k.fx * x / z + k.cx, k.fy * y / z + k.cy


def box_around(u: float, v: float, half: float = 20.0) -> Box:
    """Edge-coordinate box centred on the pixel whose K-coordinates are (u, v)."""
    cu, cv = u + 0.5, v + 0.5
    return Box(cu - half, cv - half, cu + half, cv + half)


# ------------------------------------------------------------------------------------------------


def test_intrinsics_from_k() -> None:
    k = [525.0, 0.0, 319.5, 0.0, 520.0, 239.5, 0.0, 0.0, 1.0]
    assert intrinsics_from_k(k) == K
    assert intrinsics_from_k(array.array("d", k)) == K  # rclpy gives CameraInfo.k as array('d')
    assert intrinsics_from_k(np.array(k)) == K


@pytest.mark.parametrize(
    "k",
    [
        [0.0] * 9,  # uncalibrated camera
        [-525.0, 0, 319.5, 0, 520.0, 239.5, 0, 0, 1],
        [525.0, 0, 319.5, 0, math.nan, 239.5, 0, 0, 1],
        [math.inf, 0, 319.5, 0, 520.0, 239.5, 0, 0, 1],
        [525.0, 0, math.nan, 0, 520.0, 239.5, 0, 0, 1],
        [525.0, 0, 319.5, 0, 520.0],
        [525.0, 0, 319.5, 0, 520.0, 239.5, 0, 0, 1, 0],
        ["a"] * 9,
        None,
    ],
)
def test_intrinsics_from_bad_k_is_none(k) -> None:
    assert intrinsics_from_k(k) is None


def test_backproject_inverts_projection() -> None:
    for point in [(0.3, -0.2, 1.5), (-1.0, 0.5, 4.0), (0.0, 0.0, 0.7)]:
        u, v = project(*point)
        np.testing.assert_allclose(backproject(u, v, point[2], K), point, atol=1e-12)


@pytest.mark.parametrize("point", [(0.0, 0.0, 2.0), (0.25, -0.1, 1.2), (-0.4, 0.3, 3.5)])
def test_target_on_fronto_parallel_plane(point) -> None:
    depth = np.full((H, W), point[2], np.float32)
    u, v = project(*point)
    got = target_position(depth, box_around(u, v), K)
    assert got is not None
    np.testing.assert_allclose(got, point, atol=1e-3)


def test_target_on_tilted_plane_uses_the_depth_at_the_centre() -> None:
    # plane z = z0 + a*x, rendered exactly per pixel; the median over a symmetric window is the centre depth
    z0, a = 2.0, 0.3
    us = np.arange(W, dtype=np.float64)[None, :].repeat(H, axis=0)  # (H, W) K-coordinates
    xs_over_z = (us - K.cx) / K.fx
    depth = (z0 / (1.0 - a * xs_over_z)).astype(np.float32)  # solve z = z0 + a * (xs_over_z * z)
    u, v = 400.0, 100.0
    z = z0 / (1.0 - a * (u - K.cx) / K.fx)
    expected = backproject(u, v, z, K)
    got = target_position(depth, box_around(u, v, half=10), K)
    assert got is not None
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_object_in_front_of_background() -> None:
    # a 60x60 px object at 1.0 m in front of a wall at 3.0 m; the box is a bit larger than the object
    depth = np.full((H, W), 3.0, np.float32)
    depth[200:260, 300:360] = 1.0
    box = Box(290, 190, 370, 270)  # 80x80: the inner half (40x40) is all object
    got = target_position(depth, box, K)
    assert got is not None
    cu, cv = box.center
    np.testing.assert_allclose(got, backproject(cu - 0.5, cv - 0.5, 1.0, K), atol=1e-3)
    assert got[2] == pytest.approx(1.0, abs=1e-6)


def test_median_rejects_outliers_and_holes() -> None:
    rng = np.random.default_rng(1)
    depth = np.full((H, W), 1.5, np.float32)
    region = (slice(220, 260), slice(300, 340))
    noise = rng.random(depth[region].shape)
    depth[region][noise < 0.2] = np.nan  # holes
    depth[region][(noise >= 0.2) & (noise < 0.3)] = 40.0  # flying pixels
    depth[region][(noise >= 0.3) & (noise < 0.35)] = 0.0  # no return written as 0
    got = target_position(depth, Box(280, 200, 360, 280), K)
    assert got is not None and got[2] == pytest.approx(1.5, abs=1e-6)


def test_not_enough_valid_depth_is_none() -> None:
    depth = np.full((H, W), np.nan, np.float32)
    box = Box(280, 200, 360, 280)
    assert target_position(depth, box, K) is None
    depth[240, 320] = 1.0  # one valid pixel among 1600 is not enough
    assert target_position(depth, box, K) is None
    depth[230:240, 310:320] = 1.0  # 100 valid pixels is
    assert target_position(depth, box, K) == pytest.approx(backproject(319.5, 239.5, 1.0, K))
    assert target_position(depth, box, K, min_valid=200) is None


def test_tiny_box_can_still_qualify() -> None:
    depth = np.full((H, W), 2.0, np.float32)
    got = target_position(depth, Box(100, 100, 102, 102), K)  # inner region of one pixel
    assert got is not None and got[2] == pytest.approx(2.0)
    got = target_position(depth, Box(100.2, 100.2, 100.4, 100.4), K)  # narrower than a pixel
    assert got is not None and got[2] == pytest.approx(2.0)


@pytest.mark.parametrize("intr", [None, CameraIntrinsics(0.0, 0.0, 0.0, 0.0), CameraIntrinsics(math.nan, 500, 320, 240)])
def test_invalid_intrinsics_is_none(intr) -> None:
    assert target_position(np.ones((H, W), np.float32), Box(0, 0, 10, 10), intr) is None


def test_box_outside_depth_is_none() -> None:
    assert target_position(np.ones((H, W), np.float32), Box(700, 500, 720, 520), K) is None


def test_never_nan_or_inf() -> None:
    depth = np.full((H, W), np.inf, np.float32)
    depth[::2] = -1.0
    assert target_position(depth, Box(0, 0, W, H), K) is None
    huge = np.full((H, W), 1e38, np.float32)
    got = target_position(huge, Box(0, 0, 20, 20), K)
    assert got is None or all(math.isfinite(c) for c in got)


def test_depth_at_lower_resolution_than_image() -> None:
    # depth registered to the colour image but at half resolution (e.g. 1280x960 colour, 640x480 depth)
    k_colour = CameraIntrinsics(fx=1050.0, fy=1040.0, cx=639.5, cy=479.5)
    point = (-0.2, -0.15, 1.8)  # colour pixel about (523, 393): inside a 640x480 image too
    depth = np.full((480, 640), 3.0, np.float32)
    u, v = project(*point, k=k_colour)  # colour pixel
    box = box_around(u, v, half=30)
    # the object's depth pixels: the box scaled by 1/2
    depth[int(box.y_min / 2) : int(box.y_max / 2), int(box.x_min / 2) : int(box.x_max / 2)] = point[2]
    got = target_position(depth, box, k_colour, image_size=(1280, 960))
    assert got is not None
    np.testing.assert_allclose(got, point, atol=1e-3)
    # without image_size the box would be read at the wrong place (the wall)
    wrong = target_position(depth, box, k_colour)
    assert wrong is not None and wrong[2] == pytest.approx(3.0)


def test_argument_errors() -> None:
    with pytest.raises(ValueError):
        target_position(np.ones((4, 4, 1)), Box(0, 0, 1, 1), K)
    with pytest.raises(ValueError):
        target_position(np.ones((4, 4)), Box(0, 0, 1, 1), K, inner_fraction=0.0)
    with pytest.raises(ValueError):
        target_position(np.ones((4, 4)), Box(0, 0, 1, 1), K, image_size=(0, 4))


def test_ring_seen_through_its_hole_gives_the_ring_not_the_floor() -> None:
    # a ring (outer radius 40 px, hole 18 px) at 1.0 m over a floor at 1.4 m: the inner half of its box is mostly hole
    depth = np.full((H, W), 1.4, np.float32)
    vv, uu = np.mgrid[0:H, 0:W]
    r = np.hypot(uu + 0.5 - 320, vv + 0.5 - 240)
    depth[(r <= 40) & (r > 18)] = 1.0
    box = Box(280, 200, 360, 280)
    inner = depth[220:260, 300:340]
    assert np.median(inner) == pytest.approx(1.4)  # the plain median would be the floor
    got = target_position(depth, box, K)
    assert got is not None and got[2] == pytest.approx(1.0)


def test_smoothly_varying_depth_is_not_split() -> None:
    # a steep floor seen at a grazing angle: depth 1 m .. 3 m over the box, no gap: the median, as before
    depth = np.repeat(np.linspace(3.0, 1.0, H, dtype=np.float32)[:, None], W, axis=1)
    box = Box(200, 40, 440, 440)
    inner = depth[140:340, 260:380]
    got = target_position(depth, box, K)
    assert got is not None and got[2] == pytest.approx(float(np.median(inner)), abs=1e-6)


def test_a_few_near_pixels_do_not_pull_the_point_forward() -> None:
    depth = np.full((H, W), 2.0, np.float32)
    rng = np.random.default_rng(3)
    region = depth[220:260, 300:340]
    region[rng.random(region.shape) < 0.1] = 0.4  # 10% speckle in front (dust, a wire)
    got = target_position(depth, Box(280, 200, 360, 280), K)
    assert got is not None and got[2] == pytest.approx(2.0)


def test_surface_depth_subsamples_large_regions() -> None:
    from vlm_ros.core.geometry import surface_depth

    depths = np.concatenate([np.full(300_000, 3.0), np.full(200_000, 1.2)]).astype(np.float32)
    np.random.default_rng(0).shuffle(depths)
    assert surface_depth(depths) == pytest.approx(1.2)
    assert surface_depth(np.array([2.5], np.float32)) == pytest.approx(2.5)
