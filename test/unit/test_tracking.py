"""The tracker core: association of groundings to tracks, the flow step, and the state machine (no ROS)."""

import math

import numpy as np
import pytest

from vlm_ros.core.geometry import target_geometry
from vlm_ros.core.types import Box, Frame, Target
from vlm_ros.embedded.scenes import render_scene
from vlm_ros.tracking import AssociationSettings, Candidate, Tracker, TrackerSettings, TrackState, associate
from vlm_ros.tracking.association import share_word
from vlm_ros.tracking.flow import DepthGate, FlowSettings, track_box

NS = 1_000_000_000
DT = 1.0 / 30


# --- association --------------------------------------------------------------------------------------------
def test_association_needs_the_same_label():
    box = Box(10, 10, 50, 50)
    found = associate([Candidate("red cube", box)], [Candidate("blue cube", box), Candidate(" Red Cube ", box)])
    assert found.matches == [(0, 1)]
    assert found.unmatched_detections == [0]


def test_association_gates_on_overlap_or_3d_distance():
    track = Candidate("ball", Box(0, 0, 40, 40), (0.0, 0.0, 1.0))
    far_box = Box(100, 100, 140, 140)
    assert associate([track], [Candidate("ball", far_box, (0.5, 0.0, 1.0))]).matches == []  # no overlap, 0.5 m away
    assert associate([track], [Candidate("ball", far_box, (0.05, 0.0, 1.0))]).matches == [(0, 0)]  # 5 cm away
    assert associate([track], [Candidate("ball", Box(5, 5, 45, 45))]).matches == [(0, 0)]  # IoU 0.6, no depth


def test_association_is_one_to_one_with_the_least_total_cost():
    # greedy (the best-overlapping pair first) would give track 0 detection 0 (IoU 0.90) and leave track 1, which
    # overlaps only detection 0 (IoU 0.38; detection 1: 0.25, under the gate), without one
    tracks = [Candidate("cube", Box(0, 0, 100, 100)), Candidate("cube", Box(50, 0, 150, 100))]
    detections = [Candidate("cube", Box(5, 0, 105, 100)), Candidate("cube", Box(-10, 0, 90, 100))]
    found = associate(tracks, detections)
    assert sorted(found.matches) == [(0, 1), (1, 0)]


def test_lost_tracks_match_by_label_within_the_lost_gate_and_after_visible_ones():
    settings = AssociationSettings(lost_distance_gate_m=0.5)
    lost = Candidate("cube", None, (0.0, 0.0, 1.0), lost=True)
    visible = Candidate("cube", Box(0, 0, 40, 40), (0.0, 0.0, 1.0))
    detection = Candidate("cube", Box(2, 2, 42, 42), (0.01, 0.0, 1.0))
    assert associate([lost, visible], [detection], settings).matches == [(1, 0)]
    assert associate([lost], [detection], settings).matches == [(0, 0)]
    assert associate([lost], [Candidate("cube", Box(0, 0, 9, 9), (2.0, 0.0, 1.0))], settings).matches == []


# --- scenes moved by whole pixels: exact truth for the flow -------------------------------------------------------
@pytest.fixture(scope="module")
def scene():
    return render_scene(3, n_objects=3)


def shifted(scene, dx: int, t: float, cover: Box | None = None, cover_depth: float = 0.3) -> Frame:
    """The scene moved right by dx pixels (wrapping), stamped t seconds; `cover` paints a near grey patch over it."""
    image, depth = np.roll(scene.image, dx, axis=1), np.roll(scene.depth, dx, axis=1)
    if cover is not None:
        image, depth = image.copy(), depth.copy()
        ys, xs = slice(int(cover.y_min), int(cover.y_max)), slice(int(cover.x_min), int(cover.x_max))
        image[ys, xs] = np.random.default_rng(0).integers(60, 200, image[ys, xs].shape, dtype=np.uint8)
        depth[ys, xs] = cover_depth
    return Frame(image, stamp_ns=int(round(t * NS)), intrinsics=scene.intrinsics, depth=depth)


def grounding(scene, frame: Frame, dx: int = 0, only: int | None = None) -> list[Target]:
    """Targets as the pipeline would give them: the true boxes (moved by dx) with their depth-layer geometry."""
    out = []
    for i, o in enumerate(scene.objects):
        if only is not None and i != only:
            continue
        box = Box(o.box.x_min + dx, o.box.y_min, o.box.x_max + dx, o.box.y_max)
        g = target_geometry(frame.depth, frame.intrinsics, (frame.width, frame.height), box=box)
        out.append(Target(o.label, box, position=g.position, mask=g.mask, shape=g.shape))
    return out


def started(scene, settings: TrackerSettings | None = None, only: int | None = None) -> Tracker:
    tracker = Tracker(settings or TrackerSettings())
    first = shifted(scene, 0, 0.0)
    tracker.update(first)
    tracker.grounding_started(first.stamp_ns)
    tracker.apply_grounding(grounding(scene, first, only=only), first)
    return tracker


def assert_finite(tracked):
    for t in tracked:
        values = (t.box.x_min, t.box.y_min, t.box.x_max, t.box.y_max, t.confidence, t.age_s)
        assert all(math.isfinite(v) for v in values)
        assert t.position is None or all(math.isfinite(v) for v in t.position)


def test_flow_step_follows_a_translation_and_its_depth(scene):
    box = scene.objects[0].box
    a, b = shifted(scene, 0, 0.0), shifted(scene, 4, DT)
    gray = [np.ascontiguousarray(f.image.mean(axis=2).astype(np.uint8)) for f in (a, b)]
    gate = DepthGate(float(np.median(a.depth[int(box.y_min):int(box.y_max), int(box.x_min):int(box.x_max)])), 0.1)
    step = track_box(gray[0], gray[1], box, FlowSettings(), prev_depth=a.depth, next_depth=b.depth, gate=gate)
    assert step.reason == ""
    assert step.box.x_min == pytest.approx(box.x_min + 4, abs=0.5)
    assert step.box.y_min == pytest.approx(box.y_min, abs=0.5)
    assert step.confidence > 0.5 and step.depth_m == pytest.approx(gate.depth_m, abs=0.05)


def test_flow_step_fails_with_a_reason_when_a_nearer_surface_covers_the_box(scene):
    box = scene.objects[0].box
    a, b = shifted(scene, 0, 0.0), shifted(scene, 0, DT, cover=box)
    gray = [np.ascontiguousarray(f.image.mean(axis=2).astype(np.uint8)) for f in (a, b)]
    gate = DepthGate(float(np.nanmedian(a.depth[int(box.y_min):int(box.y_max), int(box.x_min):int(box.x_max)])), 0.06)
    step = track_box(gray[0], gray[1], box, FlowSettings(), prev_depth=a.depth, next_depth=b.depth, gate=gate)
    assert step.box is None and "depth" in step.reason
    outside = track_box(gray[0], gray[1], Box(700, 10, 760, 60), FlowSettings())
    assert outside.box is None and outside.reason == "box is outside the image"


# --- the state machine ---------------------------------------------------------------------------------------
def test_tracks_keep_their_ids_and_follow_the_scene(scene):
    tracker = started(scene)
    ids = [t.track_id for t in tracker.snapshot()]
    assert len(set(ids)) == 3
    for i in range(1, 16):
        tracked = tracker.update(shifted(scene, 2 * i, i * DT))
    assert [t.track_id for t in tracked] == ids
    assert all(t.state == TrackState.TRACKING for t in tracked)
    for t, o in zip(tracked, scene.objects, strict=True):
        truth = Box(o.box.x_min + 30, o.box.y_min, o.box.x_max + 30, o.box.y_max)
        assert t.box.iou(truth) > 0.85
        assert t.position is not None and t.age_s == pytest.approx(15 * DT, abs=1e-6)
    assert_finite(tracked)
    # a grounding of the current frame confirms all three: same IDs, age 0
    frame = shifted(scene, 30, 16 * DT)
    tracker.update(frame)
    confirmed = tracker.apply_grounding(grounding(scene, frame, dx=30), frame)
    assert [t.track_id for t in confirmed] == ids and all(t.age_s == 0 for t in confirmed)
    assert all(t.reason == "confirmed by grounding" for t in confirmed)


def test_occlusion_predicts_then_loses_then_a_grounding_reacquires_the_same_id(scene):
    tracker = started(scene, TrackerSettings(predict_s=0.3), only=0)
    (first,) = tracker.snapshot()
    box = scene.objects[0].box
    cover = Box(box.x_min - 10, box.y_min - 10, box.x_max + 10, box.y_max + 10)
    states = []
    for i in range(1, 16):
        (t,) = tracker.update(shifted(scene, 0, i * DT, cover=cover))
        states.append((t.state, t.reason))
    assert states[0][0] == TrackState.PREDICTED and states[0][1].startswith("flow failed")
    assert states[-1][0] == TrackState.LOST and states[-1][1].startswith("not seen for")
    assert tracker.needs_grounding() == "track 1 lost"
    frame = shifted(scene, 0, 16 * DT)
    tracker.update(frame)
    (back,) = tracker.apply_grounding(grounding(scene, frame, only=0), frame)
    assert back.track_id == first.track_id and back.state == TrackState.RE_ACQUIRED
    assert back.reason == "re-acquired by grounding (was lost)"
    (shown,) = tracker.update(shifted(scene, 1, 17 * DT))  # the next update's output shows the re-acquisition
    assert shown.state == TrackState.RE_ACQUIRED and shown.track_id == first.track_id
    (after,) = tracker.update(shifted(scene, 2, 18 * DT))  # once
    assert after.state == TrackState.TRACKING


def test_a_nearer_surface_over_part_of_the_target_does_not_move_its_3d_position(scene):
    # a cube sliding in front covers part of the target while the flow still follows the rest: the 3-D point under
    # the mask would be pulled towards the occluder; off the target's depth it is not taken, the last one stays
    tracker = started(scene, only=1)
    (first,) = tracker.snapshot()
    box = scene.objects[1].box
    cover = Box(box.x_min - 10, box.y_min - 10, box.x_min + 0.3 * box.width, box.y_max + 10)  # (28 cm off if taken)
    for i in range(1, 4):
        (t,) = tracker.update(shifted(scene, 0, i * DT, cover=cover))
        assert t.state != TrackState.PREDICTED and t.position is not None
        assert math.dist(t.position, first.position) < 0.02


def test_a_lost_target_is_found_again_by_its_colours_once_until_a_grounding_confirms_it(scene):
    # the orange cylinder, grounded once in full view, is hidden until lost; in the first frame it shows again its
    # colours find it (same ID), before any grounding; off (colour=None), it stays lost
    box = scene.objects[2].box
    cover = Box(box.x_min - 10, box.y_min - 10, box.x_max + 10, box.y_max + 10)
    for colour in (True, False):
        settings = TrackerSettings(predict_s=0.3) if colour else TrackerSettings(predict_s=0.3, colour=None)
        tracker = started(scene, settings, only=2)
        (first,) = tracker.snapshot()
        for i in range(1, 20):
            (hidden,) = tracker.update(shifted(scene, 0, i * DT, cover=cover))
        assert hidden.state == TrackState.LOST
        (back,) = tracker.update(shifted(scene, 0, 20 * DT))
        if not colour:
            assert back.state == TrackState.LOST
            continue
        assert back.track_id == first.track_id and back.state == TrackState.RE_ACQUIRED
        assert back.reason == "found again by its colours (not yet confirmed by a grounding)"
        assert back.box.iou(box) > 0.8 and math.dist(back.position, first.position) < 0.02
        assert back.age_s == pytest.approx(20 * DT)  # since the last grounding that confirmed it, not the colours
        assert tracker.needs_grounding() == f"track {first.track_id} not yet confirmed"
        # groundings that do not find it lose it again; its colours do not bring it back before a grounding does
        frame = shifted(scene, 0, 21 * DT)
        tracker.update(frame)
        tracker.apply_grounding([], frame)
        tracker.apply_grounding([], frame)
        (refuted,) = tracker.update(shifted(scene, 0, 22 * DT))
        assert refuted.state == TrackState.LOST and refuted.reason == "not confirmed by 2 groundings in a row"


def test_a_target_its_colours_found_that_leaves_the_image_is_found_by_them_when_it_comes_back(scene):
    # the orange cylinder, found again by its colours after being hidden, moves out of the image on the right and
    # back in, with no grounding in between: its colours, not refuted, find it again as it comes back
    box = scene.objects[2].box
    tracker = started(scene, TrackerSettings(predict_s=0.3), only=2)
    cover = Box(box.x_min - 10, box.y_min - 10, box.x_max + 10, box.y_max + 10)
    for i in range(1, 20):
        tracker.update(shifted(scene, 0, i * DT, cover=cover))
    (back,) = tracker.update(shifted(scene, 0, 20 * DT))
    assert back.reason == "found again by its colours (not yet confirmed by a grounding)"
    states = []
    for i, dx in enumerate([*range(17, 470, 17), *range(470, 380, -17)], start=21):  # out by 20 px, then back
        (t,) = tracker.update(shifted(scene, dx, i * DT))
        states.append((dx, t.state, t.reason))
    left = next(k for k, (_, state, _) in enumerate(states) if state == TrackState.LOST)
    assert states[left][2] == "left the image", states
    again = next(k for k, (_, state, _) in enumerate(states) if k > left and state != TrackState.LOST)
    assert states[again][1:] == (TrackState.RE_ACQUIRED, back.reason), states
    assert t.track_id == back.track_id and t.box.iou(Box(box.x_min + 385, box.y_min, box.x_max + 385, box.y_max)) > 0.8


def test_a_late_grounding_of_a_frame_before_the_colours_found_a_target_again_is_that_track(scene):
    # the scene pans 15 px a frame; the target is hidden from frame 4 (lost), found again by its colours in frame 9;
    # then the grounding of frame 3 arrives: it is compared with where the track was in frame 3 (not a new target),
    # and the catch-up flow through the hidden frames loses it again (not kept on frame 3's box as if followed)
    v, box = 15, scene.objects[2].box
    tracker = started(scene, TrackerSettings(predict_s=0.1), only=2)
    (first,) = tracker.snapshot()
    cover = Box(box.x_min + 3 * v - 20, box.y_min - 10, box.x_max + 9 * v + 20, box.y_max + 10)
    frames = [shifted(scene, v * i, i * DT, cover=cover if 4 <= i <= 8 else None) for i in range(11)]
    for frame in frames[1:10]:
        (t,) = tracker.update(frame)
    assert t.reason == "found again by its colours (not yet confirmed by a grounding)"
    (t,) = tracker.apply_grounding(grounding(scene, frames[3], dx=3 * v, only=2), frames[3])
    assert t.track_id == first.track_id and t.state == TrackState.LOST and t.reason.startswith("not seen for")
    (t,) = tracker.update(frames[10])
    assert t.track_id == first.track_id and t.state == TrackState.RE_ACQUIRED
    assert t.box.iou(Box(box.x_min + 10 * v, box.y_min, box.x_max + 10 * v, box.y_max)) > 0.8


def test_until_a_grounding_confirms_it_a_target_found_by_its_colours_is_placed_by_them_as_it_comes_out(scene):
    # the orange cylinder comes out from behind a grey board sliding right: found by its colours when 40 % of it
    # shows, its box then grows with what comes out (the flow alone would follow the part first seen)
    box = scene.objects[2].box
    tracker = started(scene, TrackerSettings(predict_s=0.3), only=2)
    frame = shifted(scene, 0, DT)
    tracker.update(frame)
    tracker.apply_grounding(grounding(scene, frame, only=2), frame)

    def behind_board(board_x: float, t: float) -> Frame:
        f = shifted(scene, 0, t)
        image, depth = f.image.copy(), f.depth.copy()
        x0, y0, y1 = int(board_x), int(box.y_min) - 10, int(box.y_max) + 10
        image[y0:y1, x0:x0 + 200], depth[y0:y1, x0:x0 + 200] = 128, 0.3
        return Frame(image, stamp_ns=f.stamp_ns, intrinsics=f.intrinsics, depth=depth)

    states = []
    for i in range(2, 40):
        board_x = box.x_min - 10 + max(0, i - 20) * 4  # hidden until frame 20, then the board slides right
        (t,) = tracker.update(behind_board(board_x, i * DT))
        states.append((round(min(1.0, max(0.0, (board_x - box.x_min) / box.width)), 2), t.state, t.reason))
    found = next(k for k, (_, state, reason) in enumerate(states) if state == TrackState.RE_ACQUIRED)
    assert states[found - 1][1] == TrackState.LOST and 0.35 <= states[found][0] <= 0.6, states
    assert states[found][2] == "found again by its colours (not yet confirmed by a grounding)"
    assert t.box.iou(box) > 0.85, (t.box, box)


def test_a_grounding_whose_box_is_cut_short_confirms_the_track_where_it_is(scene):
    # the model boxes the lower third of a followed target (a box cut short, at the target's own depth): the track
    # keeps its box once; a second such grounding in a row moves it there
    tracker = started(scene, TrackerSettings(box_from_mask=False), only=2)
    (first,) = tracker.snapshot()
    frame = shifted(scene, 0, DT)
    (followed,) = tracker.update(frame)
    b = scene.objects[2].box
    short = Target(first.label, Box(b.x_min, b.y_max - b.height / 3, b.x_max, b.y_max), position=first.position)
    (kept,) = tracker.apply_grounding([short], frame)
    assert kept.track_id == first.track_id and kept.box.iou(followed.box) > 0.99
    assert kept.reason == "confirmed by grounding; its box kept (the grounding's box covers 33% of the followed one: " \
                          "a part of it)"
    (moved,) = tracker.apply_grounding([short], frame)
    assert moved.track_id == first.track_id and moved.box == short.box and moved.reason == "confirmed by grounding"


def test_a_grounding_whose_box_takes_in_an_occluder_confirms_the_track_where_it_is(scene):
    # a nearer object covers the left of the target; the model's box slides onto it, and the surface under the box's
    # centre is the occluder's: the track is not moved there (its flow would follow the occluder), it stays where it
    # is, with its 3-D point, and asks for the next grounding soon (a model's box is not a mask's extent here)
    tracker = started(scene, TrackerSettings(box_from_mask=False), only=2)
    (first,) = tracker.snapshot()
    box = scene.objects[2].box
    cover = Box(box.x_min - 40, box.y_min - 10, box.x_min + 0.3 * box.width, box.y_max + 10)
    frame = shifted(scene, 0, DT, cover=cover)
    (followed,) = tracker.update(frame)
    loose = Box(box.x_min - 30, box.y_min, box.x_max - 20, box.y_max)
    g = target_geometry(frame.depth, frame.intrinsics, (frame.width, frame.height), box=loose)
    assert g.position[2] < first.position[2] - 0.1  # the occluder's surface
    (kept,) = tracker.apply_grounding([Target(first.label, loose, position=g.position, mask=g.mask, shape=g.shape)],
                                      frame)
    assert kept.track_id == first.track_id and kept.state == TrackState.TRACKING
    assert kept.box.iou(followed.box) > 0.99 and kept.reason.startswith("confirmed by grounding; its box kept")
    assert math.dist(kept.position, first.position) < 0.02
    assert tracker.needs_grounding(int(0.3 * NS)) == f"track {first.track_id} not yet confirmed"
    # a second grounding in front of it in a row moves it there (the track's own depth may be the wrong one)
    (moved,) = tracker.apply_grounding([Target(first.label, loose, position=g.position, mask=g.mask,
                                               shape=g.shape)], frame)
    assert moved.track_id == first.track_id and "its box kept" not in moved.reason and moved.box.iou(loose) > 0.9


def test_a_target_coming_into_view_keeps_its_box_on_the_border_it_came_from(scene):
    box = scene.objects[0].box
    dx0 = int(640 + 0.4 * box.width - box.x_max)  # 40 % of the object beyond the right border
    tracker = Tracker()
    first = shifted(scene, dx0, 0.0)
    tracker.update(first)
    visible = Box(box.x_min + dx0, box.y_min, 640, box.y_max)
    g = target_geometry(first.depth, first.intrinsics, (640, 480), box=visible)
    tracker.apply_grounding([Target("cube", visible, position=g.position, mask=g.mask, shape=g.shape)], first)
    for i in range(1, 11):  # it moves 3 px a frame into the image; what showed of it was cut by the border
        dx = dx0 - 3 * i
        (t,) = tracker.update(shifted(scene, dx, i * DT))
    truth = Box(box.x_min + dx, box.y_min, 640, box.y_max)
    assert t.state == TrackState.TRACKING and t.box.x_max == 640
    assert t.box.iou(truth) > 0.85 and t.box.x_min == pytest.approx(truth.x_min, abs=3)


def test_late_frames_are_dropped_and_time_going_back_loses_every_track(scene):
    tracker = started(scene)
    tracker.update(shifted(scene, 0, 5 * DT))
    assert tracker.update(shifted(scene, 0, 4 * DT)) is None  # late: out of order
    assert tracker.drops["out of order"] == 1
    tracked = tracker.update(shifted(scene, 0, 5 * DT - 2.0))  # two seconds back: a looping replay
    assert all(t.state == TrackState.LOST and t.reason.startswith("clock jumped back") for t in tracked)
    assert_finite(tracked)


def test_a_frame_gap_or_a_stopped_camera_loses_the_tracks_with_the_reason(scene):
    tracker = started(scene)
    tracked = tracker.update(shifted(scene, 0, 2.0))
    assert all(t.state == TrackState.LOST and "no frame for 2.00 s" in t.reason for t in tracked)
    tracker = started(scene, only=0)
    for i in range(1, 21):  # the object moves partly out of the image to the right; then the camera stops
        (t,) = tracker.update(shifted(scene, 10 * i, i * DT))
    assert t.state != TrackState.LOST and scene.objects[0].box.x_max + 200 > 640
    tracker.camera_stopped(1.5)
    (t,) = tracker.snapshot()
    assert t.state == TrackState.LOST and t.reason == "camera stopped: no frame for 1.50 s"
    assert 0 <= t.box.x_min <= t.box.x_max <= 640  # the last box, still clipped to the image


def test_a_target_leaving_the_image_is_lost_and_never_gives_a_box_outside_it(scene):
    tracker = started(scene, only=0)
    box = scene.objects[0].box
    step = 12
    for i in range(1, 60):
        frame = shifted(scene, step * i, i * DT)
        (t,) = tracker.update(frame)
        assert 0 <= t.box.x_min <= t.box.x_max <= frame.width
        if box.x_min + step * i > frame.width:
            break
    assert t.state == TrackState.LOST and t.reason == "left the image"


def test_a_target_predicted_across_the_border_it_moves_towards_has_left_the_image(scene):
    # the ball moves right 12 px a frame; as it crosses the border the flow fails (here: what shows of it is
    # covered): predicted past that border, it is leaving, not to be found again by the flow on what it leaves
    # behind (the border's background); 63 % of its box is still inside (min_visible_fraction alone: predicted)
    box = scene.objects[0].box
    tracker = started(scene, only=0)
    for i in range(1, 17):
        (t,) = tracker.update(shifted(scene, 12 * i, i * DT))
    assert t.state == TrackState.TRACKING
    x_min = box.x_min + 12 * 17
    (t,) = tracker.update(shifted(scene, 12 * 17, 17 * DT, cover=Box(x_min - 5, box.y_min - 5, 640, box.y_max + 5)))
    assert (640 - x_min) / box.width > 0.6
    assert t.state == TrackState.LOST and t.reason == "left the image"


def test_groundings_that_do_not_confirm_a_track_lose_it_and_max_targets_bounds_new_ones(scene):
    tracker = started(scene, TrackerSettings(max_misses=2, max_targets=3), only=0)
    frame = shifted(scene, 0, DT)
    tracker.update(frame)
    tracker.apply_grounding([], frame)
    assert tracker.snapshot()[0].state == TrackState.TRACKING
    tracked = tracker.apply_grounding([], frame)
    assert tracked[0].state == TrackState.LOST and tracked[0].reason == "not confirmed by 2 groundings in a row"
    # max_targets bounds the tracks kept; a new target takes the place of the lost one, which only one grounding
    # found (a misnamed object would otherwise keep it for forget_s), never that of one still followed
    lost_id = tracked[0].track_id
    extra = [Target(f"thing {i}", Box(10 * i, 0, 10 * i + 8, 8)) for i in range(5)]
    kept = tracker.apply_grounding(extra, frame)
    assert len(kept) == 3 and lost_id not in {t.track_id for t in kept}
    assert all(t.state == TrackState.TRACKING for t in kept)
    assert tracker.drops["grounding beyond max_targets"] == 2
    assert len(tracker.apply_grounding([Target("thing 9", Box(200, 200, 208, 208))], frame)) == 3
    assert tracker.drops["grounding beyond max_targets"] == 3


def test_a_new_target_takes_the_place_of_a_lost_track_found_once_never_of_one_found_often(scene):
    tracker = started(scene, TrackerSettings(max_misses=1, max_targets=2), only=0)
    frame = shifted(scene, 0, DT)
    tracker.update(frame)
    tracker.apply_grounding(grounding(scene, frame, only=0), frame)  # the first object, found twice
    tracker.apply_grounding(grounding(scene, frame, only=1), frame)  # a second one, found once (the first missed:
    tracker.apply_grounding([], frame)  # lost); then neither: both lost
    (often, often_state), (once, once_state) = [(t.track_id, t.state) for t in tracker.snapshot()]
    assert often_state == once_state == TrackState.LOST

    def ids() -> set[int]:
        return {t.track_id for t in tracker.snapshot()}

    tracker.apply_grounding([Target("thing a", Box(0, 0, 8, 8))], frame)  # no place: the one found once goes
    assert often in ids() and once not in ids() and len(ids()) == 2
    tracker.apply_grounding([Target("thing b", Box(20, 0, 28, 8))], frame)  # thing a, missed, goes in its turn
    assert often in ids() and len(ids()) == 2
    before = tracker.drops["grounding beyond max_targets"]
    tracker.apply_grounding([Target("thing b", Box(20, 0, 28, 8))], frame)  # thing b found twice: kept while lost
    tracker.apply_grounding([], frame)
    tracker.apply_grounding([Target("thing c", Box(40, 0, 48, 8))], frame)  # no place for it
    assert often in ids() and "thing c" not in {t.label for t in tracker.snapshot()}
    assert tracker.drops["grounding beyond max_targets"] == before + 1


def test_a_new_target_takes_the_place_of_a_track_groundings_refuted_before_one_that_went_out_of_sight(scene):
    tracker = started(scene, TrackerSettings(max_misses=1, max_targets=2, predict_s=0.1), only=0)
    box = scene.objects[0].box
    cover = Box(box.x_min - 10, box.y_min - 10, box.x_max + 10, box.y_max + 10)
    for i in range(1, 6):  # covered: predicted, then lost for not being seen (found by one grounding)
        (hidden,) = tracker.update(shifted(scene, 0, i * DT, cover=cover))
    assert hidden.state == TrackState.LOST and hidden.reason.startswith("not seen for")
    frame = shifted(scene, 0, 6 * DT)
    tracker.update(frame)
    tracker.apply_grounding([Target("thing a", Box(0, 0, 8, 8))], frame)
    tracker.apply_grounding([], frame)  # thing a is not found again in view: refuted, lost (found once too)
    assert {t.label: t.state for t in tracker.snapshot()}["thing a"] == TrackState.LOST
    tracker.apply_grounding([Target("thing b", Box(20, 0, 28, 8))], frame)  # room for it: thing a goes, though
    assert [t.label for t in tracker.snapshot()] == [hidden.label, "thing b"]  # lost after the hidden one


def test_a_grounding_naming_a_followed_target_otherwise_neither_starts_a_track_nor_counts_as_a_miss(scene):
    tracker = started(scene, TrackerSettings(max_misses=1), only=0)
    (cube,) = tracker.snapshot()
    frame = shifted(scene, 0, DT)
    tracker.update(frame)
    b, width = cube.box, cube.box.width
    beside = Box(b.x_min + 0.4 * width, b.y_min, b.x_max + 0.4 * width, b.y_max)  # IoU 0.43 with the track's box
    assert 0.3 < beside.iou(b) < 0.5
    renamed = Target("cube-ish star", beside, position=cube.position)  # the same place in 3-D, another name
    (same,) = tracker.apply_grounding([renamed], frame)
    assert same.track_id == cube.track_id and same.state == TrackState.TRACKING and same.label == cube.label
    # named so by most of its last groundings (2 of 3): the track takes that name, and says why
    (same,) = tracker.apply_grounding([renamed], frame)
    assert same.track_id == cube.track_id and same.state == TrackState.TRACKING and same.label == "cube-ish star"
    assert same.reason == f"named 'cube-ish star' by 2 of the last 3 groundings (was '{cube.label}')"
    assert tracker.drops["grounding on another track's place (label differs)"] == 2
    x, y, z = cube.position
    behind = Target("ball", beside, position=(x, y, z + 0.5))  # overlapping in the image, half a metre behind it
    tracked = tracker.apply_grounding([behind], frame)
    assert {t.label for t in tracked} == {"cube-ish star", "ball"}
    assert {t.label: t.state for t in tracked}["cube-ish star"] == TrackState.LOST  # max_misses=1, nothing named it


def test_a_lost_track_is_re_acquired_by_a_grounding_of_another_label_where_it_was_last_seen(scene):
    # an object coming out from behind another is often misnamed while partly visible (a ball as a "blue star"):
    # where the lost track was last seen in 3-D (within distance_gate_m) that grounding is the same object
    tracker = started(scene, TrackerSettings(max_misses=1), only=0)
    (cube,) = tracker.snapshot()
    frame = shifted(scene, 0, DT)
    tracker.update(frame)
    (lost,) = tracker.apply_grounding([], frame)
    assert lost.state == TrackState.LOST
    x, y, z = cube.position
    elsewhere = Target("cube-ish star", Box(0, 0, 30, 30), position=(x + 0.3, y, z))  # 30 cm away: another object
    near = Target("cube-ish star", cube.box, position=(x + 0.05, y, z))  # 5 cm away
    tracked = tracker.apply_grounding([elsewhere, near], frame)
    by_id = {t.track_id: t for t in tracked}
    again = by_id[cube.track_id]
    assert again.state == TrackState.RE_ACQUIRED and again.label == cube.label  # its name, 1 of 2 votes against 1
    assert again.reason == "re-acquired by grounding as 'cube-ish star' (was lost)"
    assert [t.label for t in tracked if t.track_id != cube.track_id] == ["cube-ish star"]  # the far one: new
    # re-acquired under another name, it is not yet confirmed: a grounding is asked for at the minimum interval
    tracker.update(shifted(scene, 0, 0.3))
    assert tracker.needs_grounding() == f"track {cube.track_id} not yet confirmed"


def test_a_lost_track_is_re_acquired_further_by_a_label_sharing_a_word_with_its_own(scene):
    # the depth under a partly visible object's box is partly its occluder's: the point of a "red cylinder" coming
    # out from behind a cube lies 25 cm from where the red ball was lost; a word in common lets it be the ball
    assert share_word("red ball", "Red cylinder") and not share_word("red ball", "green cylinder")
    for label, same in (("red cylinder", True), ("green cylinder", False)):
        tracker = started(scene, TrackerSettings(max_misses=1), only=0)
        (ball,) = tracker.snapshot()
        frame = shifted(scene, 0, DT)
        tracker.update(frame)
        tracker.apply_grounding([], frame)
        x, y, z = ball.position
        tracked = tracker.apply_grounding([Target(label, ball.box, position=(x, y, z - 0.25))], frame)
        assert (tracked[0].state == TrackState.RE_ACQUIRED) is same and len(tracked) == (1 if same else 2)


def test_a_new_track_on_the_place_of_one_a_grounding_finds_under_its_own_label_is_that_object(scene):
    # the ball comes out from behind the cube: one grounding names it "blue star" (a new track), the next "blue ball"
    # (its lost track re-acquired); the new track, never confirmed, is the same object: lost, saying so
    tracker = started(scene, TrackerSettings(max_misses=1), only=0)
    (ball,) = tracker.snapshot()
    frame = shifted(scene, 0, DT)
    tracker.update(frame)
    tracker.apply_grounding([], frame)
    misnamed = Target("blue star", ball.box)  # no depth under it: nothing ties it to the lost track
    _, star = tracker.apply_grounding([misnamed], frame)
    assert star.label == "blue star" and star.state == TrackState.TRACKING and star.track_id != ball.track_id
    again, star = tracker.apply_grounding(grounding(scene, frame, only=0), frame)
    assert again.track_id == ball.track_id and again.state == TrackState.RE_ACQUIRED
    assert star.state == TrackState.LOST and star.reason == f"the same object as track {ball.track_id} ('{ball.label}')"


def test_one_box_named_twice_in_a_grounding_is_one_target_under_its_first_name(scene):
    # the model, unsure of a partly visible object, gives nearly the same box as "yellow cylinder" and "yellow cone":
    # one track (two would hold two of max_targets' places); boxes of two labels that merely overlap are two targets
    tracker = Tracker(TrackerSettings())
    frame = shifted(scene, 0, 0.0)
    tracker.update(frame)
    box = scene.objects[1].box
    again = Box(box.x_min + 1, box.y_min + 2, box.x_max, box.y_max + 1)
    assert box.iou(again) >= 0.8
    tracked = tracker.apply_grounding([Target("yellow cylinder", box), Target("yellow cone", again)], frame)
    assert [t.label for t in tracked] == ["yellow cylinder"] and tracker.drops["repeated grounding"] == 1
    half = Box(box.x_min + box.width / 2, box.y_min, box.x_max + box.width / 2, box.y_max)
    assert box.iou(half) < 0.5
    tracked = tracker.apply_grounding([Target("yellow cylinder", box), Target("red cube", half)], frame)
    assert sorted(t.label for t in tracked) == ["red cube", "yellow cylinder"]


def test_a_grounded_target_is_followed_from_its_masks_extent_not_the_models_loose_box(scene):
    frame = shifted(scene, 0, 0.0)
    true_box = scene.objects[0].box
    loose = Box(true_box.x_min - 12, true_box.y_min - 12, true_box.x_max + 12, true_box.y_max + 12)  # a model's box
    g = target_geometry(frame.depth, frame.intrinsics, (frame.width, frame.height), box=loose)
    assert g.mask is not None
    targets = [Target("cube", loose, position=g.position, mask=g.mask, shape=g.shape), Target("ball", Box(0, 0, 9, 9))]
    boxes = {}
    for box_from_mask in (True, False):
        tracker = Tracker(TrackerSettings(box_from_mask=box_from_mask))
        tracker.update(frame)
        boxes[box_from_mask] = {t.label: t.box for t in tracker.apply_grounding(targets, frame)}
    assert boxes[False]["cube"] == loose and loose.iou(true_box) < 0.7
    assert boxes[True]["cube"].iou(true_box) >= 0.9
    assert boxes[True]["ball"] == boxes[False]["ball"] == Box(0, 0, 9, 9)  # no mask: the model's box
    # over a depth image of 1/16 the resolution the mask is coarse (16x16-pixel blocks; the cube, 68 px wide, spans
    # under min_mask_depth_px of them): the model's box is kept
    depth = np.ascontiguousarray(frame.depth[::16, ::16])
    coarse = Frame(frame.image, stamp_ns=0, intrinsics=frame.intrinsics, depth=depth)
    g = target_geometry(coarse.depth, coarse.intrinsics, (coarse.width, coarse.height), box=loose)
    assert g.mask is not None
    tracker = Tracker(TrackerSettings(min_mask_depth_px=8))
    tracker.update(coarse)
    (cube,) = tracker.apply_grounding([Target("cube", loose, position=g.position, mask=g.mask, shape=g.shape)], coarse)
    assert cube.box == loose


def test_needs_grounding_first_periodically_and_when_weak_but_not_too_often(scene):
    settings = TrackerSettings(reground_period_s=1.0, min_reground_interval_s=0.2)
    tracker = Tracker(settings)
    assert tracker.needs_grounding() == ""  # no frame yet
    tracker.update(shifted(scene, 0, 0.0))
    assert tracker.needs_grounding() == "first grounding"
    tracker.grounding_started(0)
    tracker.apply_grounding(grounding(scene, shifted(scene, 0, 0.0), only=0), shifted(scene, 0, 0.0))
    tracker.update(shifted(scene, 0, 0.1))
    assert tracker.needs_grounding() == ""  # within the minimum interval
    frame = shifted(scene, 0, 0.3)
    tracker.update(frame)
    assert tracker.needs_grounding() == "track 1 not yet confirmed"  # one grounding found it so far
    tracker.grounding_started(frame.stamp_ns)
    tracker.apply_grounding(grounding(scene, frame, only=0), frame)
    tracker.update(shifted(scene, 0, 0.7))
    assert tracker.needs_grounding() == ""  # confirmed, healthy and within the period
    tracker.update(shifted(scene, 0, 0.9))
    tracker.camera_stopped(0.4)
    assert tracker.needs_grounding() == "track 1 lost"
    tracker.update(shifted(scene, 0, 1.3))
    assert tracker.needs_grounding() == "period"


def test_flow_follows_an_object_moving_across_a_still_background_from_a_loose_box():
    """The green star of the moving scene moves ~5 px per frame over the still table; from its box grown by a third
    (table around it), the box moves with the star."""
    import cv2

    from vlm_ros.embedded.motion import MotionRenderer, default_script

    renderer = MotionRenderer(default_script())
    a, b = renderer.render(0.5, 15), renderer.render(0.5 + DT, 16)
    star_a, star_b = (next(o for o in f.objects if o.label == "green star") for f in (a, b))
    grow = star_a.box.width / 6
    loose = Box(star_a.box.x_min - grow, star_a.box.y_min - grow, star_a.box.x_max + grow, star_a.box.y_max + grow)
    gray = [cv2.cvtColor(f.image, cv2.COLOR_RGB2GRAY) for f in (a, b)]
    step = track_box(gray[0], gray[1], loose, FlowSettings())
    truth_dx = star_b.box.center[0] - star_a.box.center[0]
    assert truth_dx > 4
    assert step.box is not None, step.reason
    assert step.box.center[0] - loose.center[0] == pytest.approx(truth_dx, abs=1.5)
