"""vlm_ros.models.phrases: the one object-phrase extractor (detectors: noun phrases; VLM prompts: referring
expressions)."""

from __future__ import annotations

import pytest

from vlm_ros.models.phrases import grounding_phrases, object_phrases


@pytest.mark.parametrize("text, phrases", [
    ("where is the red mug?", ["red mug"]),
    ("Where's my coffee cup", ["coffee cup"]),
    ("find the cube and the blue ball", ["cube", "blue ball"]),
    ("Please pick up the small green cylinder next to the bowl.", ["small green cylinder"]),
    ("how many cubes are there?", ["cubes"]),
    ("what color is the ball?", ["ball"]),
    ("is there a mug on the left of the table?", ["mug"]),
    ("There are two red cubes on the table.", ["red cubes"]),
    ("A red mug, a blue ball and three yellow cones.", ["red mug", "blue ball", "yellow cones"]),
    ("give me the box of the mug left of the ball", ["mug"]),
    ("point to the red mug", ["red mug"]),
    ("Describe the scene.", []),
    ("yes", []),
    ("", []),
    ("<OD> </s>", ["od s"]),  # markup cannot survive: only letters, digits, spaces
])
def test_noun_phrases_for_detectors(text, phrases):
    assert object_phrases(text) == phrases


@pytest.mark.parametrize("instruction, phrases", [
    ("where is the red mug?", ["red mug"]),
    ("Find the cup, the ball; a cone.", ["cup", "ball", "cone"]),
    ("detect all persons", ["persons"]),
    ("Please show me the small blue cube", ["small blue cube"]),
    ("give me the box of the mug left of the ball", ["mug left of the ball"]),
    ("is there a mug on the left of the table?", ["mug on the left of the table"]),
    ("red mug", ["red mug"]),
    ("where is?", []),
    ("   ", []),
])
def test_referring_expressions_for_vlm_prompts(instruction, phrases):
    assert object_phrases(instruction, referring=True) == phrases


def test_limits():
    text = ", ".join(f"the {c} ball" for c in ["red", "green", "blue", "yellow", "white"])
    assert object_phrases(text, max_phrases=2) == ["red ball", "green ball"]
    assert object_phrases("the very big old red mug", max_words=2) == ["red mug"]
    assert object_phrases("the mug. The mug!") == ["mug"]
    assert object_phrases("x " * 100_000) == ["x x x x"]  # long input: bounded work and output
    assert object_phrases("x " * 100_000, referring=True) == [" ".join(["x"] * 12)]
    assert object_phrases("the red mug", max_phrases=0) == []


def test_grounding_phrases_fall_back_to_the_answer():
    assert grounding_phrases("where is the mug?", "A red mug on a table.") == ["mug"]
    assert grounding_phrases("what is on the table?", "a red mug and a blue ball") == ["table"]
    assert grounding_phrases("describe the scene", "a red mug and a blue ball") == ["red mug", "blue ball"]
    assert grounding_phrases("", "") == []
