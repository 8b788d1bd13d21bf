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


@pytest.mark.parametrize("intr", [None, CameraIntrinsics(0.0, 0.0, 0.0, 0.0),
                                  CameraIntrinsics(math.nan, 500, 320, 240)])
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


# ------------------------------------------------------------------------------------------------ masks and 3-D
# Synthetic scenes whose truth is computed by hand: flat plates (one depth) in front of planes. A plate over pixel
# columns [c0, c1) and rows [r0, r1) at depth z: its points are the pixel centres (K coordinates i) at z, so the
# centroid is ((c0 + c1 - 1) / 2 - cx) z / fx, ... and the extent runs from pixel c0's centre to pixel (c1 - 1)'s.

from vlm_ros.core.geometry import (  # noqa: E402
    MAX_REGION_PIXELS,
    LayerSettings,
    depth_layer_mask,
    target_geometry,
)
from vlm_ros.core.types import GeometryMethod, Mask  # noqa: E402


def tilted_wall(z_left: float = 2.0, z_right: float = 2.6, h: int = H, w: int = W) -> np.ndarray:
    """(h, w) depth of a plane whose depth grows from left to right (1/z is affine in the pixel column)."""
    inv = np.linspace(1.0 / z_left, 1.0 / z_right, w)[None, :].repeat(h, axis=0)
    return (1.0 / inv).astype(np.float32)


def table(pitch_deg: float = 35.0, cam_height: float = 0.7, k: CameraIntrinsics = K, h: int = H,
          w: int = W) -> np.ndarray:
    """(h, w) depth of a table plane seen from a camera pitched down (depth grows towards the top rows)."""
    ray_v = (np.arange(h) - k.cy) / k.fy
    down = math.cos(math.radians(pitch_deg)) * ray_v + math.sin(math.radians(pitch_deg))
    return np.repeat((cam_height / down)[:, None], w, axis=1).astype(np.float32)


def plate_truth(c0: int, r0: int, c1: int, r1: int, z: float, k: CameraIntrinsics = K):
    """Hand-computed (centroid, extent_min, extent_max) of a plate of whole pixels at depth z."""
    def x(c):
        return (c - k.cx) * z / k.fx

    def y(r):
        return (r - k.cy) * z / k.fy

    centroid = (x((c0 + c1 - 1) / 2), y((r0 + r1 - 1) / 2), z)
    return centroid, (x(c0), y(r0), z), (x(c1 - 1), y(r1 - 1), z)


def rect(c0: int, r0: int, c1: int, r1: int, h: int = H, w: int = W) -> np.ndarray:
    out = np.zeros((h, w), bool)
    out[r0:r1, c0:c1] = True
    return out


def assert_plate(geometry, c0, r0, c1, r1, z, k=K, valid=None) -> None:
    centroid, lo, hi = plate_truth(c0, r0, c1, r1, z, k)
    np.testing.assert_allclose(geometry.position, centroid, atol=1e-6)
    np.testing.assert_allclose(geometry.shape.extent_min, lo, atol=1e-6)
    np.testing.assert_allclose(geometry.shape.extent_max, hi, atol=1e-6)
    n = (c1 - c0) * (r1 - r0)
    assert geometry.shape.valid_points == (n if valid is None else valid)
    assert geometry.shape.valid_fraction == pytest.approx((n if valid is None else valid) / n)


def test_plate_in_front_of_a_tilted_wall_gives_its_exact_mask_centroid_and_extent() -> None:
    depth = tilted_wall()
    depth[150:230, 250:350] = 1.2  # 100 x 80 px at 1.2 m
    box = Box(250, 150, 350, 230)
    mask = depth_layer_mask(depth, box)
    assert mask is not None and mask.source == "depth_layer"
    assert (mask.x0, mask.y0, mask.data.shape) == (250, 150, (80, 100)) and mask.data.all()
    geometry = target_geometry(depth, K, (W, H), box=box)
    assert geometry.shape.method == GeometryMethod.DEPTH_LAYER
    assert np.array_equal(geometry.mask.full(W, H), rect(250, 150, 350, 230))
    assert_plate(geometry, 250, 150, 350, 230, 1.2)
    assert geometry.shape.size[2] == 0.0  # a flat front: no depth extent


def test_a_box_that_cuts_the_object_still_gets_the_whole_object() -> None:
    # a detector's box is off by a few pixels (the embedded model's boxes are quantised to 1/64 of the image)
    depth = tilted_wall()
    depth[150:230, 250:350] = 1.2
    geometry = target_geometry(depth, K, (W, H), box=Box(255, 146, 343, 224))
    assert np.array_equal(geometry.mask.full(W, H), rect(250, 150, 350, 230))
    assert_plate(geometry, 250, 150, 350, 230, 1.2)


def test_a_box_cut_short_on_a_larger_object_is_followed_to_the_object_s_edges() -> None:
    # the model boxes the top-left part of a large face (the embedded model does so on the large cube)
    depth = tilted_wall()
    depth[150:320, 250:420] = 1.2  # 170 x 170 px
    box = Box(250, 150, 370, 262)
    geometry = target_geometry(depth, K, (W, H), box=box)
    assert np.array_equal(geometry.mask.full(W, H), rect(250, 150, 420, 320))
    np.testing.assert_allclose(geometry.position, plate_truth(250, 150, 420, 320, 1.2)[0], atol=1e-4)
    grown = Box(250, 150, 370 + 18, 262 + 18)  # the box grown by 0.15 of its larger side (120 px)
    assert depth_layer_mask(depth, box, settings=LayerSettings(extend=0.0)).extent() == grown
    # a face running on further than three quarters of the box's larger side beyond it is more than the box shows
    depth[150:400, 250:500] = 1.2
    assert depth_layer_mask(depth, box).extent() == grown


def test_a_layer_that_runs_on_beyond_the_extension_ends_at_the_grown_box() -> None:
    # a wavy table that no plane explains: the object's depth layer runs on over it, beyond the extension: what
    # lies beyond the grown box is not the object
    rows, cols = np.mgrid[0:H, 0:W]
    depth = (table() * (1.0 + 0.03 * np.sin(cols / 20.0) * np.sin(rows / 15.0))).astype(np.float32)
    r0, r1, c0, c1 = 200, 300, 280, 360
    depth[r0:r1, c0:c1] = float(depth[r1, c0])
    mask = depth_layer_mask(depth, Box(c0, r0, c1, r1))
    grown = Box(c0 - 15, r0 - 15, c1 + 15, r1 + 15)  # 0.15 of the larger side each way
    extent = mask.extent()
    assert grown.x_min <= extent.x_min and extent.x_max <= grown.x_max
    assert grown.y_min <= extent.y_min and extent.y_max <= grown.y_max


def test_object_standing_on_a_table_leaves_the_table_out() -> None:
    # a plate standing on the table: its base row touches the table, whose depth there equals the plate's
    depth = table()
    r0, r1, c0, c1 = 200, 300, 280, 360
    z = float(depth[r1, c0])  # the table's depth just below the plate's base
    depth[r0:r1, c0:c1] = z
    geometry = target_geometry(depth, K, (W, H), box=Box(c0, r0, c1, r1))
    # hand truth: a plate row belongs to the object where it stands at least 1 % (background_margin) in front of
    # the table behind it; the last rows above the base do not (the table there is as near as the plate)
    rows = [r for r in range(r0, r1) if z < 0.99 * float(depth[r, 0])]
    assert rows == list(range(r0, rows[-1] + 1)) and r1 - len(rows) - r0 <= 8
    assert np.array_equal(geometry.mask.full(W, H), rect(c0, r0, c1, rows[-1] + 1))
    assert_plate(geometry, c0, r0, c1, rows[-1] + 1, z)
    table_pixels = geometry.mask.full(W, H) & ~rect(c0, r0, c1, r1)
    assert not table_pixels.any()


def test_ring_mask_leaves_out_the_background_seen_through_its_hole() -> None:
    depth = np.full((H, W), 1.4, np.float32)
    vv, uu = np.mgrid[0:H, 0:W]
    r = np.hypot(uu + 0.5 - 320, vv + 0.5 - 240)
    ring = (r <= 40) & (r > 18)
    depth[ring] = 1.0
    geometry = target_geometry(depth, K, (W, H), box=Box(280, 200, 360, 280))
    assert np.array_equal(geometry.mask.full(W, H), ring)
    # symmetric about pixel centre (319.5, 239.5) = (cx, cy): the centroid is on the optical axis
    np.testing.assert_allclose(geometry.position, (0.0, 0.0, 1.0), atol=1e-9)
    cols = np.nonzero(ring.any(axis=0))[0]
    assert geometry.shape.extent_min[0] == pytest.approx((cols[0] - K.cx) / K.fx)
    assert geometry.shape.extent_max[0] == pytest.approx((cols[-1] - K.cx) / K.fx)
    assert geometry.shape.valid_points == ring.sum()


def test_holes_of_missing_depth_are_in_the_mask_but_not_in_the_points() -> None:
    depth = tilted_wall()
    depth[150:230, 250:350] = 1.2
    rng = np.random.default_rng(4)
    holes = np.zeros((H, W), bool)
    holes[152:228, 252:348] = rng.random((76, 96)) < 0.15  # NaN inside the plate, none on its border
    depth[holes] = np.nan
    depth[100, 100] = np.nan  # and a hole in the wall, outside the box
    geometry = target_geometry(depth, K, (W, H), box=Box(250, 150, 350, 230))
    assert np.array_equal(geometry.mask.full(W, H), rect(250, 150, 350, 230))
    # the centroid of the valid points only: x, y means over the valid pixel centres, by hand
    vs, us = np.nonzero(rect(250, 150, 350, 230) & ~holes)
    expected = ((us.mean() - K.cx) * 1.2 / K.fx, (vs.mean() - K.cy) * 1.2 / K.fy, 1.2)
    np.testing.assert_allclose(geometry.position, expected, atol=1e-9)
    assert geometry.shape.valid_points == 8000 - holes.sum()
    assert geometry.shape.valid_fraction == pytest.approx(1.0 - holes.sum() / 8000)


def test_depth_at_half_the_colour_resolution() -> None:
    # colour 1280x960, depth 640x480 registered to it: colour pixel i reads depth pixel i // 2, and depth pixel j
    # stands at colour K coordinate 2 j + 0.5
    k_colour = CameraIntrinsics(fx=1050.0, fy=1040.0, cx=639.5, cy=479.5)
    depth = tilted_wall()
    depth[100:140, 300:350] = 1.5  # depth pixels
    geometry = target_geometry(depth, k_colour, (1280, 960), box=Box(600, 200, 700, 280))
    assert np.array_equal(geometry.mask.full(1280, 960), rect(600, 200, 700, 280, 960, 1280))
    x = lambda j: (2 * j + 0.5 - k_colour.cx) * 1.5 / k_colour.fx  # noqa: E731
    y = lambda j: (2 * j + 0.5 - k_colour.cy) * 1.5 / k_colour.fy  # noqa: E731
    np.testing.assert_allclose(geometry.position, ((x(300) + x(349)) / 2, (y(100) + y(139)) / 2, 1.5), atol=1e-9)
    np.testing.assert_allclose(geometry.shape.extent_min, (x(300), y(100), 1.5), atol=1e-9)
    np.testing.assert_allclose(geometry.shape.extent_max, (x(349), y(139), 1.5), atol=1e-9)
    assert geometry.shape.valid_points == 50 * 40  # depth pixels
    # a segmenter's mask in colour pixels gives the same points
    by_mask = target_geometry(depth, k_colour, (1280, 960), mask=geometry.mask)
    assert by_mask.shape.method == GeometryMethod.MASK and by_mask.mask is geometry.mask
    np.testing.assert_allclose(by_mask.position, geometry.position, atol=1e-12)


def test_segmenter_mask_spilling_onto_the_background_is_fenced_off() -> None:
    depth = tilted_wall()
    depth[150:230, 250:350] = 1.2
    spill = np.zeros((88, 108), bool)
    spill[2:86, 2:106] = True  # the plate and 2 px of wall around it (a segmenter's soft edge)
    geometry = target_geometry(depth, K, (W, H), mask=Mask(246, 146, spill, "segmenter"))
    assert geometry.shape.method == GeometryMethod.MASK
    centroid, lo, hi = plate_truth(250, 150, 350, 230, 1.2)
    np.testing.assert_allclose(geometry.position, centroid, atol=1e-6)
    np.testing.assert_allclose(geometry.shape.extent_min, lo, atol=1e-6)
    np.testing.assert_allclose(geometry.shape.extent_max, hi, atol=1e-6)
    assert geometry.shape.valid_points == spill.sum() and geometry.shape.valid_fraction == 1.0


def test_neighbour_touching_the_object_at_another_depth_is_left_out() -> None:
    depth = tilted_wall()
    depth[150:230, 250:350] = 1.2
    depth[140:240, 350:420] = 1.35  # touches the plate's right side, 15 cm further back
    geometry = target_geometry(depth, K, (W, H), box=Box(250, 150, 350, 230))
    assert np.array_equal(geometry.mask.full(W, H), rect(250, 150, 350, 230))
    depth[140:240, 350:420] = 1.05  # or 15 cm nearer
    geometry = target_geometry(depth, K, (W, H), box=Box(250, 150, 350, 230))
    assert np.array_equal(geometry.mask.full(W, H), rect(250, 150, 350, 230))


def test_flat_object_on_the_background_gives_the_surface_inside_the_box() -> None:
    depth = tilted_wall()  # a sheet of paper on the wall: nothing stands out
    geometry = target_geometry(depth, K, (W, H), box=Box(250, 150, 350, 230))
    assert geometry.shape.method == GeometryMethod.DEPTH_LAYER
    assert np.array_equal(geometry.mask.full(W, H), rect(250, 150, 350, 230))
    vs, us = np.nonzero(rect(250, 150, 350, 230))
    z = depth[vs, us].astype(np.float64)
    expected = (((us - K.cx) * z / K.fx).mean(), ((vs - K.cy) * z / K.fy).mean(), z.mean())
    np.testing.assert_allclose(geometry.position, expected, atol=1e-9)


def test_large_box_is_read_at_a_stride_and_stays_accurate() -> None:
    depth = tilted_wall()
    depth[60:420, 100:540] = 1.0  # 440 x 360 px: its search region is over MAX_REGION_PIXELS
    assert 440 * 360 > MAX_REGION_PIXELS
    geometry = target_geometry(depth, K, (W, H), box=Box(100, 60, 540, 420))
    truth = rect(100, 60, 540, 420)
    got = geometry.mask.full(W, H)
    assert (got & truth).sum() / (got | truth).sum() > 0.98
    centroid, lo, hi = plate_truth(100, 60, 540, 420, 1.0)
    np.testing.assert_allclose(geometry.position, centroid, atol=2e-3)
    np.testing.assert_allclose(geometry.shape.extent_min, lo, atol=5e-3)
    np.testing.assert_allclose(geometry.shape.extent_max, hi, atol=5e-3)
    assert geometry.shape.valid_points < MAX_REGION_PIXELS  # bounded work


def test_point_target_gets_the_ray_at_the_surface_depth() -> None:
    depth = tilted_wall()
    depth[150:230, 250:350] = 1.2
    geometry = target_geometry(depth, K, (W, H), point=(300.5, 190.5))  # the centre of pixel (300, 190)
    assert geometry.mask is None and geometry.shape.method == GeometryMethod.POINT
    np.testing.assert_allclose(geometry.position, backproject(300, 190, 1.2, K), atol=1e-9)
    assert geometry.shape.size == (0.0, 0.0, 0.0) and geometry.shape.valid_points == 25
    assert target_geometry(depth, K, (W, H), point=(700.0, 10.0)) == (None, None, None)
    assert target_geometry(np.full((H, W), np.nan, np.float32), K, (W, H), point=(300.5, 190.5)) == (None, None, None)


def test_tiny_box_falls_back_to_the_box_median() -> None:
    depth = tilted_wall()
    depth[150:230, 250:350] = 1.2
    geometry = target_geometry(depth, K, (W, H), box=Box(300, 190, 301, 191))
    assert geometry.mask is None and geometry.shape.method == GeometryMethod.BOX_MEDIAN
    np.testing.assert_allclose(geometry.position, backproject(300, 190, 1.2, K), atol=1e-9)


def test_empty_and_out_of_image_masks_and_invalid_depth_give_no_geometry() -> None:
    depth = tilted_wall()
    depth[150:230, 250:350] = 1.2
    empty = Mask(250, 150, np.zeros((80, 100), bool), "segmenter")
    assert target_geometry(depth, K, (W, H), mask=empty) == (empty, None, None)
    outside = Mask(700, 500, np.ones((10, 10), bool), "segmenter")
    assert target_geometry(depth, K, (W, H), mask=outside) == (outside, None, None)
    invalid = np.full((H, W), np.nan, np.float32)
    invalid[::2] = 0.0
    invalid[1::4] = -1.0
    assert target_geometry(invalid, K, (W, H), box=Box(250, 150, 350, 230)) == (None, None, None)
    assert depth_layer_mask(invalid, Box(250, 150, 350, 230)) is None
    full = Mask(250, 150, np.ones((80, 100), bool), "segmenter")
    assert target_geometry(invalid, K, (W, H), mask=full) == (full, None, None)
    # no depth or no intrinsics: the given mask stays, nothing 3-D; a box gets no mask
    assert target_geometry(None, K, (W, H), mask=full) == (full, None, None)
    assert target_geometry(depth, None, (W, H), box=Box(250, 150, 350, 230)) == (None, None, None)
    uncalibrated = CameraIntrinsics(0.0, 0.0, 0.0, 0.0)
    assert target_geometry(depth, uncalibrated, (W, H), box=Box(0, 0, 9, 9)) == (None, None, None)
    with pytest.raises(ValueError):
        target_geometry(depth, K, (W, H))


def test_boxes_outside_or_far_beyond_the_image() -> None:
    depth = tilted_wall()
    depth[150:230, 250:350] = 1.2
    assert target_geometry(depth, K, (W, H), box=Box(700, 500, 720, 520)) == (None, None, None)
    huge = target_geometry(depth, K, (W, H), box=Box(-1e30, -1e30, 1e30, 1e30))  # clipped to the image
    assert huge.position is not None and all(math.isfinite(c) for c in huge.position)
    assert huge.mask.x0 >= 0 and huge.mask.y0 >= 0
    assert huge.mask.x0 + huge.mask.data.shape[1] <= W and huge.mask.y0 + huge.mask.data.shape[0] <= H


@pytest.mark.parametrize("seed", range(12))
def test_never_nan_or_inf_on_hostile_depth(seed) -> None:
    rng = np.random.default_rng(seed)
    depth = rng.uniform(0.2, 5.0, (120, 160)).astype(np.float32)
    kinds = rng.random(depth.shape)
    depth[kinds < 0.1] = np.nan
    depth[(kinds >= 0.1) & (kinds < 0.15)] = np.inf
    depth[(kinds >= 0.15) & (kinds < 0.2)] = -np.inf
    depth[(kinds >= 0.2) & (kinds < 0.25)] = 0.0
    depth[(kinds >= 0.25) & (kinds < 0.3)] = 3e38
    depth[(kinds >= 0.3) & (kinds < 0.32)] = 1e-38
    k = CameraIntrinsics(fx=130.0, fy=130.0, cx=79.5, cy=59.5)
    for _ in range(20):
        x0, y0 = rng.uniform(-50, 200), rng.uniform(-50, 150)
        box = Box(x0, y0, x0 + rng.uniform(0, 200), y0 + rng.uniform(0, 150))
        for geometry in (target_geometry(depth, k, (160, 120), box=box),
                         target_geometry(depth, k, (320, 240), box=box),  # depth at half resolution
                         target_geometry(depth, k, (160, 120), point=(x0, y0))):
            if geometry.position is not None:
                values = geometry.position + geometry.shape.extent_min + geometry.shape.extent_max
                assert all(math.isfinite(v) for v in values + (geometry.shape.valid_fraction,))
                assert 0.0 < geometry.shape.valid_fraction <= 1.0
            if geometry.mask is not None:
                assert geometry.mask.data.any() and geometry.mask.x0 >= 0 and geometry.mask.y0 >= 0
