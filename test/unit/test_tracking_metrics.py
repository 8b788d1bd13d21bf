"""The tracking scores on hand-made sequences: hit fraction, ID switches, re-acquisition after a hidden stretch,
3-D error, and that lost tracks count for nothing."""

from dataclasses import dataclass

import pytest

from vlm_ros.core.types import Box
from vlm_ros.tools.tracking_metrics import score_tracking


@dataclass
class Obj:
    object_id: int
    label: str
    box: Box | None
    visible_fraction: float
    surface_centroid: tuple | None = (0.0, 0.0, 1.0)


@dataclass
class Trk:
    track_id: int
    box: Box
    state: str = "tracking"
    position: tuple | None = (0.0, 0.0, 1.0)


BOX = Box(100, 100, 150, 150)
FAR = Box(300, 300, 350, 350)


def test_hits_switches_and_3d_error():
    frames = []
    for i in range(10):
        track_id = 1 if i < 6 else 2  # the object's track changes once, at frame 6
        box = BOX if i != 3 else FAR  # frame 3: the track is elsewhere (a miss)
        frames.append((i / 10, [Obj(7, "cube", BOX, 1.0)], [Trk(track_id, box, position=(0.0, 0.0, 1.01))]))
    score = score_tracking(frames)
    (o,) = score.objects
    assert (o.visible_frames, o.hit_frames, o.id_switches) == (10, 9, 1)
    assert o.track_ids == [1, 2]
    assert o.errors_3d == pytest.approx([0.01] * 9)
    assert score.id_switches_per_300_frames == pytest.approx(30.0)
    assert score.update_rate_hz == pytest.approx(10.0)


def test_lost_tracks_do_not_count_and_partly_visible_frames_are_not_required():
    frames = [(0.0, [Obj(1, "ball", BOX, 1.0)], [Trk(1, BOX, state="lost")]),
              (0.1, [Obj(1, "ball", BOX, 0.3)], [])]  # 30 % visible: not counted either way
    (o,) = score_tracking(frames).objects
    assert (o.visible_frames, o.hit_frames) == (1, 0)


def test_reacquisition_after_a_hidden_stretch_is_timed_and_checks_the_id():
    frames = []
    for i in range(30):
        t = i / 10
        if 5 <= i < 15:  # hidden for 1.0 s
            frames.append((t, [Obj(1, "ball", None, 0.0)], []))
        elif i < 18:  # visible again from frame 15, tracked again (same ID) from frame 18: 0.3 s later
            frames.append((t, [Obj(1, "ball", BOX, 1.0)], [Trk(1, BOX)] if i < 5 else []))
        else:
            frames.append((t, [Obj(1, "ball", BOX, 1.0)], [Trk(1, BOX)]))
    (o,) = score_tracking(frames).objects
    (r,) = o.reacquisitions
    assert r.hidden_s == pytest.approx(1.0) and r.delay_s == pytest.approx(0.3) and r.same_id
    assert o.id_switches == 0

    # never tracked again: an infinite delay; an object that only comes into view is no re-acquisition
    frames = [(0.0, [Obj(1, "ball", BOX, 1.0), Obj(2, "star", None, 0.0)], [Trk(1, BOX)]),
              *[(i / 10, [Obj(1, "ball", None, 0.0), Obj(2, "star", None, 0.0)], []) for i in range(1, 6)],
              (0.6, [Obj(1, "ball", BOX, 1.0), Obj(2, "star", FAR, 1.0)], [Trk(3, FAR)])]
    ball, star = score_tracking(frames).objects
    assert [r.delay_s for r in ball.reacquisitions] == [float("inf")] and star.reacquisitions == []

    # a track that never overlapped the object before it was hidden: no ID to compare with (not a new ID)
    frames = [(0.0, [Obj(1, "ball", BOX, 1.0)], [Trk(1, FAR)]),
              *[(i / 10, [Obj(1, "ball", None, 0.0)], []) for i in range(1, 6)],
              (0.6, [Obj(1, "ball", BOX, 1.0)], [Trk(1, BOX)])]
    score = score_tracking(frames)
    (o,) = score.objects
    assert [r.same_id for r in o.reacquisitions] == [None]
    assert "(not paired before it was hidden)" in score.lines()[1]
