"""Instructions and answers: every answer agrees with the scene's ground truth, and boxes encode as documented."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from vlm_ros.core.types import Box
from vlm_ros.embedded.scenes import COLORS, SHAPES, SIZES, render_scene
from vlm_ros.embedded.tasks import (
    DEFAULT_DESCRIBE_INSTRUCTION,
    KINDS,
    LOC_BINS,
    NONE_ANSWER,
    PLURALS,
    describe_answer,
    format_box,
    loc_bin,
    make_example,
    vocabulary_words,
)
from vlm_ros.models.parsing import parse_loc_tokens


def node_boxes(text: str, width: float, height: float) -> list[tuple[str, Box]]:
    """(label, box) as the node reads the embedded model's answer."""
    return [(b.label, b.box) for b in parse_loc_tokens(text, width, height, bins=LOC_BINS).boxes]


def bin_centre(n: int, size: float) -> float:
    return (n + 0.5) * size / LOC_BINS


@pytest.fixture(scope="module")
def scenes():
    return [render_scene(s) for s in range(20)]


def _objs_matching(scene, words: list[str]):
    size = next((w for w in words if w in SIZES), None)
    color = next((w for w in words if w in COLORS), None)
    shape = next((s for w in words for s in SHAPES if w in (s, PLURALS[s])), None)
    return [
        o
        for o in scene.objects
        if (size is None or o.size == size) and (color is None or o.color == color)
        and (shape is None or o.shape == shape)
    ]


def test_format_box_golden():
    assert LOC_BINS == 64
    assert format_box(Box(0, 0, 640, 480), 640, 480) == "<loc_0><loc_0><loc_63><loc_63>"
    assert format_box(Box(10, 7.5, 20, 15), 640, 480) == "<loc_1><loc_1><loc_2><loc_2>"
    assert loc_bin(-5, 640) == 0 and loc_bin(10_000, 640) == LOC_BINS - 1


def test_the_node_parser_reads_back_the_training_answers():
    text = "red ball<loc_1><loc_2><loc_3><loc_4>, blue cube<loc_10><loc_20><loc_30><loc_40>"
    got = node_boxes(text, 640, 480)
    assert [label for label, _ in got] == ["red ball", "blue cube"]
    assert got[1][1] == Box(bin_centre(10, 640), bin_centre(20, 480), bin_centre(30, 640), bin_centre(40, 480))
    assert bin_centre(0, 640) == pytest.approx(5.0) and bin_centre(63, 480) == pytest.approx(476.25)
    assert node_boxes("red ball<loc_1><loc_2><loc_3>", 640, 480) == []  # three tokens only
    assert node_boxes("red ball<loc_1><loc_2><loc_3><loc_99>", 640, 480) == []  # out of range
    assert node_boxes("none", 640, 480) == []


def test_describe_default_and_order(scenes):
    assert DEFAULT_DESCRIBE_INSTRUCTION == "describe the scene"
    for s in scenes:
        items = re.split(r", | and ", describe_answer(s))
        want = sorted(s.objects, key=lambda o: o.box.center[0])
        assert [re.sub(r"^an? ", "", i) for i in items] == [f"{o.size} {o.color} {o.shape}" for o in want]


def test_every_answer_is_consistent_with_the_scene(scenes):
    rng = np.random.default_rng(0)
    seen = Counter()
    for s in scenes:
        for kind in KINDS:
            for _ in range(3):
                try:
                    ex = make_example(s, rng, kind)
                except ValueError:
                    continue
                seen[kind] += 1
                words = re.findall(r"[a-z]+", ex.instruction)
                if kind == "exist":
                    assert ex.answer == ("yes" if _objs_matching(s, words) else "no")
                elif kind == "count":
                    assert ex.answer == str(len(_objs_matching(s, words)))
                elif kind == "color":
                    (o,) = _objs_matching(s, words)  # asked only when unique
                    assert ex.answer == o.color
                elif kind == "shape":
                    (o,) = _objs_matching(s, words)
                    assert ex.answer == o.shape
                elif kind == "ground":
                    m = _objs_matching(s, words[words.index("the") + 1 :])
                    if ex.answer == NONE_ANSWER:
                        assert m == [] and ex.targets == []
                    else:
                        (o,) = m
                        ((label, box),) = node_boxes(ex.answer, s.width, s.height)
                        assert label == o.label and ex.targets == [(o.label, o.box)]
                        assert box.iou(o.box) > 0.75  # only quantisation separates them
                elif kind == "list":
                    got = node_boxes(ex.answer, s.width, s.height)
                    assert [lb for lb, _ in got] == [lb for lb, _ in ex.targets]
                    xs = [b.center[0] for _, b in ex.targets]
                    assert xs == sorted(xs) and len(got) == len(s.objects)
                elif kind == "relation":
                    m = re.match(r"is the (.+?) (?:to the |on the )?(left|right) of the (.+)\?", ex.instruction)
                    (a,) = _objs_matching(s, m.group(1).split())
                    (b,) = _objs_matching(s, m.group(3).split())
                    left = a.box.center[0] < b.box.center[0]
                    assert ex.answer == ("yes" if left == (m.group(2) == "left") else "no")
    assert all(seen[k] > 5 for k in KINDS), seen


def test_instructions_vary(scenes):
    rng = np.random.default_rng(1)
    for kind in ("ground", "count", "describe", "list"):
        firsts = {make_example(scenes[0], rng, kind).instruction.split()[0] for _ in range(60)}
        assert len(firsts) >= 3, (kind, firsts)


def test_vocabulary_covers_all_examples(scenes):
    vocab = set(vocabulary_words())
    rng = np.random.default_rng(2)
    for s in scenes:
        for _ in range(20):
            ex = make_example(s, rng)
            text = re.sub(r"<loc_\d+>", " ", ex.instruction + " " + ex.answer)
            for w in re.findall(r"[a-z0-9]+|[?,.]", text):
                assert w in vocab, w


def test_absent_object_grounds_to_none():
    s = render_scene(5, n_objects=0)
    ex = make_example(s, np.random.default_rng(0), "ground")
    assert ex.answer == NONE_ANSWER and ex.targets == []
    assert make_example(s, np.random.default_rng(0), "describe").answer == "nothing"
