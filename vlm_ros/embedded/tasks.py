"""Instructions and answers for the embedded model: its training and evaluation data.

Answers are short, deterministic strings computed from a scene's ground truth. Boxes are written as four
location tokens after the object's label, `<loc_x0><loc_y0><loc_x1><loc_y1>` (the format of prompt.py):
bin = clamp(floor(coord / size * LOC_BINS)); vlm_ros.models.parsing.parse_loc_tokens reads a bin back as pixel
(bin + 0.5) * size / LOC_BINS, as the node does.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from vlm_ros.core.types import Box
from vlm_ros.embedded.prompt import DEFAULT_DESCRIBE_INSTRUCTION, LOC_BINS
from vlm_ros.embedded.scenes import COLORS, SHAPES, SIZES, Scene, SceneObject

KINDS: tuple[str, ...] = ("describe", "exist", "count", "color", "shape", "relation", "ground", "list")
# Sampling weights of the kinds in training data (grounding is the hardest and most used).
KIND_WEIGHTS: dict[str, float] = {
    "describe": 0.08,
    "exist": 0.10,
    "count": 0.12,
    "color": 0.10,
    "shape": 0.08,
    "relation": 0.10,
    "ground": 0.30,
    "list": 0.12,
}
_KINDS = tuple(KIND_WEIGHTS)
_KIND_P = np.array([KIND_WEIGHTS[k] for k in _KINDS])
_KIND_P = _KIND_P / _KIND_P.sum()
PLURALS: dict[str, str] = {s: s + "s" for s in SHAPES}
NUMBERS: tuple[str, ...] = tuple(str(i) for i in range(11))
NONE_ANSWER = "none"

TEMPLATES: dict[str, tuple[str, ...]] = {
    "describe": (
        DEFAULT_DESCRIBE_INSTRUCTION,
        "describe the image",
        "describe what you see",
        "what is on the table?",
        "what do you see?",
        "what objects are there?",
        "what is in the picture?",
        "tell me what is on the table",
    ),
    "exist": (
        "is there {a} {exp}?",
        "do you see {a} {exp}?",
        "can you see {a} {exp}?",
        "is there any {exp} on the table?",
    ),
    "count": (
        "how many {what} are there?",
        "how many {what} do you see?",
        "count the {what}",
        "how many {what} are on the table?",
        "what is the number of {what}?",
    ),
    "color": (
        "what color is the {exp}?",
        "what colour is the {exp}?",
        "which color is the {exp}?",
        "tell me the colour of the {exp}",
        "what is the color of the {exp}?",
    ),
    "shape": (
        "what shape is the {exp} object?",
        "what is the {exp} object?",
        "what kind of object is the {exp} one?",
        "which shape does the {exp} object have?",
    ),
    "relation": (
        "is the {a} {side} of the {b}?",
        "is the {a} to the {side} of the {b}?",
        "is the {a} on the {side} of the {b}?",
    ),
    "ground": (
        "where is the {exp}?",
        "find the {exp}",
        "locate the {exp}",
        "show me the {exp}",
        "point to the {exp}",
        "detect the {exp}",
        "give me the box of the {exp}",
    ),
    "list": (
        "list all objects",
        "detect everything",
        "detect all objects",
        "find all objects",
        "locate every object",
        "list all objects with boxes",
        "where are all the objects?",
    ),
}


@dataclass
class Example:
    instruction: str
    answer: str
    kind: str
    targets: list[tuple[str, Box]] = field(default_factory=list)  # (label, box in source pixels)


# ---------------------------------------------------------------- location tokens
def loc_bin(coord: float, size: float, bins: int = LOC_BINS) -> int:
    return int(min(max(math.floor(coord / size * bins), 0), bins - 1))


def format_box(box: Box, width: float, height: float, bins: int = LOC_BINS) -> str:
    """`<loc_x0><loc_y0><loc_x1><loc_y1>` for a box in source pixels."""
    b = (
        loc_bin(box.x_min, width, bins),
        loc_bin(box.y_min, height, bins),
        loc_bin(box.x_max, width, bins),
        loc_bin(box.y_max, height, bins),
    )
    return "".join(f"<loc_{n}>" for n in b)


# ---------------------------------------------------------------- helpers
def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _left_to_right(objs: list[SceneObject]) -> list[SceneObject]:
    return sorted(objs, key=lambda o: (o.box.center[0], o.box.center[1]))


def _matches(o: SceneObject, size: str | None, color: str | None, shape: str | None) -> bool:
    return ((size is None or o.size == size) and (color is None or o.color == color)
            and (shape is None or o.shape == shape))


def _phrase(size: str | None, color: str | None, shape: str | None, noun: str = "") -> str:
    return " ".join(w for w in (size, color, shape or noun) if w)


def unique_expressions(scene: Scene, index: int) -> list[tuple[str | None, str | None, str | None]]:
    """(size, color, shape) expressions naming object `index` and no other (shape always given)."""
    o = scene.objects[index]
    out = []
    for cand in ((None, None, o.shape), (None, o.color, o.shape), (o.size, None, o.shape), (o.size, o.color, o.shape)):
        if sum(_matches(p, *cand) for p in scene.objects) == 1:
            out.append(cand)
    return out


def describe_answer(scene: Scene) -> str:
    items = [f"{article(o.size)} {o.size} {o.color} {o.shape}" for o in _left_to_right(scene.objects)]
    if not items:
        return "nothing"
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def list_answer(scene: Scene) -> tuple[str, list[tuple[str, Box]]]:
    objs = _left_to_right(scene.objects)
    if not objs:
        return NONE_ANSWER, []
    text = ", ".join(o.label + format_box(o.box, scene.width, scene.height) for o in objs)
    return text, [(o.label, o.box) for o in objs]


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


# ---------------------------------------------------------------- generators (None = not applicable)
def gen_describe(scene: Scene, rng: np.random.Generator) -> Example | None:
    return Example(_pick(rng, TEMPLATES["describe"]), describe_answer(scene), "describe")


def gen_list(scene: Scene, rng: np.random.Generator) -> Example | None:
    text, targets = list_answer(scene)
    return Example(_pick(rng, TEMPLATES["list"]), text, "list", targets)


def gen_exist(scene: Scene, rng: np.random.Generator) -> Example | None:
    want_yes = rng.random() < 0.5 and scene.objects
    if want_yes:
        o = _pick(rng, scene.objects)
        size, color, shape = o.size, o.color, o.shape
    else:
        size, color, shape = _pick(rng, SIZES), _pick(rng, COLORS), _pick(rng, SHAPES)
    r = rng.random()
    if r < 0.15:
        color = None
    elif r < 0.7:
        size = None
    exp = _phrase(size, color, shape)
    present = any(_matches(o, size, color, shape) for o in scene.objects)
    instr = _pick(rng, TEMPLATES["exist"]).format(a=article(exp), exp=exp)
    return Example(instr, "yes" if present else "no", "exist")


def gen_count(scene: Scene, rng: np.random.Generator) -> Example | None:
    r = rng.random()
    color = shape = None
    src = _pick(rng, scene.objects) if scene.objects and rng.random() < 0.8 else None
    if r < 0.45:
        shape = src.shape if src else _pick(rng, SHAPES)
    elif r < 0.7:
        color = src.color if src else _pick(rng, COLORS)
    elif r < 0.9:
        shape, color = (src.shape, src.color) if src else (_pick(rng, SHAPES), _pick(rng, COLORS))
    what = " ".join(w for w in (color, PLURALS[shape] if shape else "objects") if w)
    n = sum(_matches(o, None, color, shape) for o in scene.objects)
    instr = _pick(rng, TEMPLATES["count"]).format(what=what)
    return Example(instr, str(n), "count")


def gen_color(scene: Scene, rng: np.random.Generator) -> Example | None:
    cands = []
    for o in scene.objects:
        for size in (None, o.size):
            if sum(_matches(p, size, None, o.shape) for p in scene.objects) == 1:
                cands.append((size, o))
    if not cands:
        return None
    size, o = _pick(rng, cands)
    instr = _pick(rng, TEMPLATES["color"]).format(exp=_phrase(size, None, o.shape))
    return Example(instr, o.color, "color")


def gen_shape(scene: Scene, rng: np.random.Generator) -> Example | None:
    cands = []
    for o in scene.objects:
        for size in (None, o.size):
            if sum(_matches(p, size, o.color, None) for p in scene.objects) == 1:
                cands.append((size, o))
    if not cands:
        return None
    size, o = _pick(rng, cands)
    instr = _pick(rng, TEMPLATES["shape"]).format(exp=_phrase(size, o.color, None))
    return Example(instr, o.shape, "shape")


def gen_relation(scene: Scene, rng: np.random.Generator) -> Example | None:
    named = [(i, unique_expressions(scene, i)) for i in range(len(scene.objects))]
    named = [(i, e) for i, e in named if e]
    pairs = []
    for i, _ in named:
        for j, _ in named:
            dx = scene.objects[i].box.center[0] - scene.objects[j].box.center[0]
            if i != j and abs(dx) > 0.05 * scene.width:
                pairs.append((i, j))
    if not pairs:
        return None
    i, j = _pick(rng, pairs)
    exps = dict(named)
    a = _phrase(*_pick(rng, exps[i]))
    b = _phrase(*_pick(rng, exps[j]))
    side = "left" if rng.random() < 0.5 else "right"
    a_left = scene.objects[i].box.center[0] < scene.objects[j].box.center[0]
    yes = a_left if side == "left" else not a_left
    instr = _pick(rng, TEMPLATES["relation"]).format(a=a, b=b, side=side)
    return Example(instr, "yes" if yes else "no", "relation")


def gen_ground(scene: Scene, rng: np.random.Generator) -> Example | None:
    template = _pick(rng, TEMPLATES["ground"])
    if rng.random() < 0.12 or not scene.objects:  # an absent object
        for _ in range(20):
            size = _pick(rng, SIZES) if rng.random() < 0.3 else None
            color, shape = _pick(rng, COLORS), _pick(rng, SHAPES)
            if not any(_matches(o, size, color, shape) for o in scene.objects):
                return Example(template.format(exp=_phrase(size, color, shape)), NONE_ANSWER, "ground", [])
        return None
    cands = [(i, e) for i in range(len(scene.objects)) for e in unique_expressions(scene, i)]
    if not cands:
        return None
    i, exp = _pick(rng, cands)
    o = scene.objects[i]
    answer = o.label + format_box(o.box, scene.width, scene.height)
    return Example(template.format(exp=_phrase(*exp)), answer, "ground", [(o.label, o.box)])


GENERATORS = {
    "describe": gen_describe,
    "exist": gen_exist,
    "count": gen_count,
    "color": gen_color,
    "shape": gen_shape,
    "relation": gen_relation,
    "ground": gen_ground,
    "list": gen_list,
}


def make_example(scene: Scene, rng: np.random.Generator, kind: str | None = None) -> Example:
    """One (instruction, answer) pair; `kind` None draws one by KIND_WEIGHTS among those that apply."""
    if kind is not None:
        ex = GENERATORS[kind](scene, rng)
        if ex is None:
            raise ValueError(f"no {kind} question applies to scene {scene.seed}")
        return ex
    for _ in range(50):
        k = _KINDS[int(rng.choice(len(_KINDS), p=_KIND_P))]
        ex = GENERATORS[k](scene, rng)
        if ex is not None:
            return ex
    return gen_describe(scene, rng)  # always applies


def vocabulary_words() -> list[str]:
    """Every word an instruction or answer can contain (without location tokens), sorted."""
    words: set[str] = set()
    for ts in TEMPLATES.values():
        for t in ts:
            words.update(w for w in re.findall(r"[a-z]+|[?,.]", re.sub(r"\{\w+\}", " ", t)))
    words.update(SHAPES, COLORS, SIZES, PLURALS.values(), NUMBERS)
    words.update(("a", "an", "and", "yes", "no", "none", "nothing", "objects", "left", "right", ",", "?", "."))
    return sorted(words)
