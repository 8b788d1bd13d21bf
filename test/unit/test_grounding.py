"""The grounding stage through the Pipeline: every family answers a grounding request with targets or a message
that says why, the detector boxes what families without coordinates name, segmenter masks and points, and bad
detector / segmenter output dropped and counted.

Models are tiny random ones built from configs (VLMs, OWLv2, Grounding DINO, SAM, SAM 2). Fakes stand in only
for a detector or segmenter whose misbehaviour is the input under test (NaN boxes, floods, failing calls), and for
an engine whose fixed text (Florence-2 polygons) feeds the real adapter and pipeline."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from model_checks import frame, one_thread  # noqa: F401  (one_thread: autouse fixture)

from vlm_ros.core.types import Box, CameraIntrinsics, Frame, Request, Status, Task
from vlm_ros.engine import GenerationResult, StopReason
from vlm_ros.grounding import Grounder, GroundingSettings, naming_question
from vlm_ros.models.detector import OpenVocabularyDetector
from vlm_ros.models.registry import load_adapter
from vlm_ros.models.segmenter import BoxSegmenter
from vlm_ros.pipeline import Pipeline
from vlm_ros.testing.tiny_detector import build_tiny_grounding_dino, build_tiny_owlv2
from vlm_ros.testing.tiny_segmenter import build_tiny_sam, build_tiny_sam2

W, H = 160, 120
GROUND = Request(Task.GROUND, "where is the red mug?", max_new_tokens=6)


def build(family: str, path):
    """A tiny random model directory of `family` (the embedded family: the shipped weights)."""
    from vlm_ros.testing import tiny, tiny_blip2, tiny_florence2, tiny_idefics3, tiny_paligemma, tiny_qwen2_5_vl

    builders = {"llava": tiny.build_tiny_llava, "idefics3": tiny_idefics3.build_tiny_idefics3,
                "blip2": tiny_blip2.build_tiny_blip2, "instructblip": tiny_blip2.build_tiny_instructblip,
                "florence2": tiny_florence2.build_tiny_florence2, "qwen2_5_vl": tiny_qwen2_5_vl.build_tiny_qwen2_5_vl,
                "paligemma": tiny_paligemma.build_tiny_paligemma}
    return "" if family == "embedded" else builders[family](path)


FAMILIES = ["embedded", "llava", "florence2", "qwen2_5_vl", "idefics3", "paligemma", "blip2", "instructblip"]
CANNOT_GROUND = {"llava", "idefics3", "blip2", "instructblip"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("grounding_models")
    return {"owlv2": OpenVocabularyDetector.from_pretrained(build_tiny_owlv2(root / "owlv2")),
            "grounding-dino": OpenVocabularyDetector.from_pretrained(build_tiny_grounding_dino(root / "gdino")),
            "sam": BoxSegmenter.from_pretrained(build_tiny_sam(root / "sam")),
            "sam2": BoxSegmenter.from_pretrained(build_tiny_sam2(root / "sam2")),
            "root": root}


@pytest.fixture(scope="module")
def adapters(models):
    return {f: load_adapter(build(f, models["root"] / f), f) for f in FAMILIES}


def depth_frame(seed: int = 0) -> Frame:
    f = frame(seed, H, W)
    f.depth = np.full((H, W), 1.5, np.float32)
    f.intrinsics = CameraIntrinsics(100.0, 100.0, 80.0, 60.0)
    return f


def assert_finite(answer) -> None:
    for t in answer.targets:
        values = [t.score, *(t.position or ()), *(t.point or ())]
        if t.box is not None:
            values += [t.box.x_min, t.box.y_min, t.box.x_max, t.box.y_max]
            assert 0 <= t.box.x_min < t.box.x_max <= W and 0 <= t.box.y_min < t.box.y_max <= H
        assert all(math.isfinite(v) for v in values)


# --- settings and prompts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "boxes"}, "grounding must be one of"),
    ({"mode": "detector"}, "needs grounding_detector"),
    ({"detector_threshold": 1.0}, r"\[0, 1\)"),
    ({"detector_threshold": math.nan}, r"\[0, 1\)"),
    ({"max_targets": 0}, "max_targets"),
])
def test_settings_refuse_bad_values_with_a_reason(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GroundingSettings(**kwargs)


def test_naming_question_names_the_objects_instead_of_the_bare_phrase():
    assert naming_question("red mug") == "Where is the red mug in the image? Name each one you see."
    assert naming_question("find the cup and the ball") == \
        "Where is the cup and the ball in the image? Name each one you see."
    assert naming_question("what can I grasp?") == \
        "what can I grasp? Name the objects in the image that this refers to."
    assert naming_question("") == "Name the objects in the image."


@pytest.mark.parametrize("family", sorted(CANNOT_GROUND))
def test_families_without_boxes_are_asked_to_name_the_objects(adapters, family):
    adapter = adapters[family]
    paired = Grounder(detector=object())  # any detector: the choice is what is tested
    asked = paired.vlm_request(GROUND, adapter)
    assert asked.task == Task.ANSWER and asked.instruction == naming_question(GROUND.instruction)
    assert "Name each one you see" in adapter.prompt(asked)
    assert Grounder().vlm_request(GROUND, adapter) is GROUND  # no detector: the request as is


# --- every family: targets or a message that says why ---------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_answers_with_targets_or_says_why(adapters, models, family):
    adapter = adapters[family]
    settings = GroundingSettings(detector="owlv2-dir")
    pipeline = Pipeline(adapter, grounder=Grounder(settings, detector=models["owlv2"]))
    answer = pipeline.answer(depth_frame(), GROUND)
    assert answer.status == Status.OK, answer.message
    assert answer.targets or answer.message, "an empty target list with no reason"
    assert_finite(answer)
    if family in CANNOT_GROUND:  # auto: the detector boxes what the instruction names
        assert answer.targets and {t.label for t in answer.targets} == {"red mug"}
        assert answer.timings.ground > 0 and all(t.position is not None for t in answer.targets)
    else:  # auto: the model's own boxes (tiny random weights give none: the message says so)
        assert answer.timings.ground == 0
        if not answer.targets:
            assert "box or point" in answer.message, answer.message
    bare = Pipeline(adapter).answer(depth_frame(), GROUND)
    assert bare.status == Status.OK and (bare.targets or bare.message)
    if family in CANNOT_GROUND:
        assert not bare.targets and "set grounding_detector" in bare.message, bare.message


def test_modes_choose_who_boxes(adapters, models):
    qwen, llava, f = adapters["qwen2_5_vl"], adapters["llava"], depth_frame()
    owl = models["owlv2"]
    by_detector = Pipeline(qwen, grounder=Grounder(GroundingSettings("d", "detector"), detector=owl)).answer(f, GROUND)
    assert by_detector.targets and by_detector.timings.ground > 0  # a family that grounds, boxed by the detector
    vlm_only = Pipeline(llava, grounder=Grounder(GroundingSettings("d", "vlm"), detector=owl)).answer(f, GROUND)
    assert not vlm_only.targets and "grounding is 'vlm'" in vlm_only.message and vlm_only.timings.ground == 0


def test_detector_boxes_are_the_owl_grid_in_source_pixels_best_first(adapters, models):
    # the tiny OWLv2 predicts its grid prior: 40x40 cells over the 160x160 padded square (test_detector.py)
    pipeline = Pipeline(adapters["llava"], grounder=Grounder(GroundingSettings("d", max_targets=5),
                                                             detector=models["owlv2"]))
    answer = pipeline.answer(depth_frame(), GROUND)
    assert len(answer.targets) == 5 and answer.message.count("beyond max_targets") == 0  # the detector's own cap
    for t in answer.targets:
        assert (round(t.box.width), round(t.box.height)) in {(40, 40), (20, 40), (40, 20), (20, 20)}
    assert [t.score for t in answer.targets] == sorted((t.score for t in answer.targets), reverse=True)


def test_grounding_dino_pairs_too(adapters, models):
    pipeline = Pipeline(adapters["blip2"], grounder=Grounder(GroundingSettings("d", detector_threshold=0.01),
                                                             detector=models["grounding-dino"]))
    answer = pipeline.answer(depth_frame(), Request(Task.GROUND, "find the cube and the blue ball", 4))
    assert answer.targets and {t.label for t in answer.targets} <= {"cube", "blue ball"}
    assert_finite(answer)


# --- segmenters -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("segmenter", ["sam", "sam2"])
def test_segmenter_masks_are_cropped_to_their_boxes(adapters, models, segmenter):
    grounder = Grounder(GroundingSettings("d", segmenter="s"), detector=models["owlv2"], segmenter=models[segmenter])
    answer = Pipeline(adapters["idefics3"], grounder=grounder).answer(depth_frame(), GROUND)
    assert answer.status == Status.OK and answer.targets and answer.timings.segment > 0
    full = models[segmenter].segment(depth_frame(), [t.box for t in answer.targets])
    masked = 0
    for t, m in zip(answer.targets, full, strict=True):
        x0, y0 = math.floor(t.box.x_min), math.floor(t.box.y_min)
        x1, y1 = math.ceil(t.box.x_max), math.ceil(t.box.y_max)
        inside = m[y0:y1, x0:x1]
        if t.mask is None or t.mask.source == "depth_layer":  # random weights: an empty segmenter mask inside the
            assert not inside.any()  # box is dropped and counted; the target falls back to its depth layer
            continue
        masked += 1
        assert t.mask.source == "segmenter" and (t.mask.x0, t.mask.y0) == (x0, y0)
        assert t.mask.data.tolist() == inside.tolist()
    dropped = len(answer.targets) - masked
    assert grounder.drops["segmenter mask"] == dropped
    assert masked and (dropped == 0 or f"{dropped} segmenter masks dropped" in answer.message)


# --- points ------------------------------------------------------------------------------------------------------


class FixedText:
    """An engine whose answer is fixed text: the adapter's real prepare/parse and the pipeline run on it."""

    def __init__(self, texts, stop=StopReason.EOS):
        self.texts, self.stop, self.calls = texts, stop, []

    def generate(self, inputs, max_new_tokens, *, deadline=None, on_text=None, cancel=None):
        self.calls.append(max_new_tokens)
        text = self.texts(len(self.calls)) if callable(self.texts) else self.texts
        return GenerationResult(token_ids=[1], text=text, stop_reason=self.stop)


class Recording:
    """A detector that records what it is asked for and finds nothing."""

    def __init__(self):
        self.phrases = None

    def detect(self, frame, phrases, threshold=None, *, max_detections=100):
        self.phrases = phrases
        return []


def test_phrases_come_from_the_answer_when_the_instruction_names_none(adapters):
    recording = Recording()
    pipeline = Pipeline(adapters["llava"], engine=FixedText("I see a red cup and a blue ball."),
                        grounder=Grounder(GroundingSettings("d"), detector=recording))
    answer = pipeline.answer(depth_frame(), Request(Task.GROUND, "what can I grasp?"))
    assert recording.phrases == ["red cup", "blue ball"]
    assert answer.status == Status.OK and not answer.targets
    assert "the detector found none of [red cup, blue ball]" in answer.message
    assert "grounding_detector_threshold" in answer.message
    nothing = Pipeline(adapters["llava"], engine=FixedText("yes"),
                       grounder=Grounder(GroundingSettings("d"), detector=Recording()))
    assert "no object named" in nothing.answer(depth_frame(), Request(Task.GROUND, "what can I grasp?")).message


def test_qwen_points_become_point_targets_with_3d(adapters):
    text = '[{"point_2d": [84, 56], "label": "red mug"}, {"point_2d": [84, 1e9], "label": "x"}]'
    pipeline = Pipeline(adapters["qwen2_5_vl"], engine=FixedText(text))
    answer = pipeline.answer(depth_frame(), Request(Task.GROUND, "point to the red mug"))
    [target] = answer.targets
    assert target.box is None and target.point == pytest.approx((80, 60)) and target.label == "red mug"
    assert target.position == pytest.approx((0.0, 0.0, 1.5), abs=0.01)  # the principal point at 1.5 m
    assert "1 malformed model outputs dropped" in answer.message and pipeline.drops["model output"] == 1


# --- Florence-2 polygons ---------------------------------------------------------------------------------------


def test_florence2_polygons_become_masks_of_their_targets(adapters):
    # <OPEN_VOCABULARY_DETECTION> answer: one box, bins over the 32x32 input = the whole 160x120 frame;
    # then <REFERRING_EXPRESSION_SEGMENTATION>: a triangle inside that box
    box_text = "red mug<loc_250><loc_250><loc_750><loc_750>"
    poly_text = "<loc_300><loc_300><loc_700><loc_300><loc_500><loc_700>"
    engine = FixedText(lambda call: box_text if call == 1 else poly_text)
    answer = Pipeline(adapters["florence2"], engine=engine).answer(depth_frame(), GROUND)
    [target] = answer.targets
    assert (target.box.x_min, target.box.y_min) == pytest.approx((40.08, 30.06))
    assert target.mask is not None and target.mask.source == "polygon"
    area = target.mask.area
    triangle = 0.5 * (0.4 * W) * (0.4 * H)
    assert 0.8 * triangle < area < 1.2 * triangle
    full = target.mask.full(W, H)
    assert full[int(0.4 * H), int(0.5 * W)] and not full[int(0.69 * H), int(0.32 * W)]
    assert engine.calls[1] >= 256  # the polygon generation has its own token budget


def test_florence2_truncated_polygon_is_dropped(adapters):
    engine = FixedText(lambda call: "mug<loc_250><loc_250><loc_750><loc_750>" if call == 1 else
                       "<loc_300><loc_300><loc_700><loc_300><loc_500><loc_700>", stop=StopReason.LENGTH)
    answer = Pipeline(adapters["florence2"], engine=engine).answer(depth_frame(), GROUND)
    assert answer.targets[0].mask.source == "depth_layer" and "polygon outputs dropped" in answer.message


# --- bad input: dropped, counted, the query still answers ------------------------------------------------------


class BadDetector:
    def __init__(self, output):
        self.output = output

    def detect(self, frame, phrases, threshold=None, *, max_detections=100):
        if isinstance(self.output, Exception):
            raise self.output
        return self.output


GOOD = ("red mug", 0.9, Box(10, 10, 50, 40))


@pytest.mark.parametrize("output, reasons", [
    ([("red mug", 0.8, [math.nan, 1, 20, 20]), GOOD], "1 non-finite"),
    ([("red mug", math.inf, [1, 1, 20, 20]), GOOD], "1 non-finite"),
    ([("red mug", 0.8, [1, 1, 1e30, 20]), GOOD], "1 out of range"),
    ([("red mug", 0.8, [-500, -500, -400, -400]), GOOD], "1 out of range"),
    ([("red mug", 0.8, [30, 10, 20, 40]), GOOD], "1 inverted"),
    ([("red mug", 0.8, [10, 10, 10.5, 40]), GOOD], "1 degenerate"),
    ([("red mug", 0.8, "a box"), (None, 0.8, [1, 1, 9, 9]), GOOD], "2 malformed"),
    ([GOOD] + [("red mug", 0.5, [i % 100, 1, i % 100 + 9, 9]) for i in range(100_000)], "too many"),
])
def test_bad_detector_boxes_are_dropped_and_counted(adapters, output, reasons):
    grounder = Grounder(GroundingSettings("d", max_targets=5), detector=BadDetector(output))
    pipeline = Pipeline(adapters["llava"], grounder=grounder)
    t0 = time.monotonic()
    answer = pipeline.answer(depth_frame(), GROUND)
    assert time.monotonic() - t0 < 5.0  # a flood is not read in full
    assert answer.status == Status.OK and answer.targets and answer.targets[0].box == GOOD[2]
    assert reasons in answer.message and grounder.drops["detector box"] > 0
    assert pipeline.dropped_outputs >= grounder.drops["detector box"]
    assert len(answer.targets) <= 5
    assert_finite(answer)


def test_a_failing_detector_is_reported_and_the_query_still_answers(adapters):
    grounder = Grounder(GroundingSettings("d"), detector=BadDetector(torch.cuda.OutOfMemoryError("no memory")))
    answer = Pipeline(adapters["llava"], grounder=grounder).answer(depth_frame(), GROUND)
    assert answer.status == Status.OK and not answer.targets and answer.text is not None
    assert "the detector failed: OutOfMemoryError" in answer.message and grounder.drops["detector failure"] == 1


class BadSegmenter:
    def __init__(self, make):
        self.make = make

    def segment(self, frame, boxes):
        return self.make(frame, boxes)


def _raise(frame, boxes):
    raise RuntimeError("segmenter exploded")


@pytest.mark.parametrize("make, note", [
    (_raise, "the segmenter failed (RuntimeError: segmenter exploded); no segmenter masks"),
    (lambda f, boxes: [np.zeros((H, W), bool)] * len(boxes), "segmenter masks dropped"),  # empty
    (lambda f, boxes: [np.ones((H + 1, W), bool)] * len(boxes), "segmenter masks dropped"),  # wrong shape
    (lambda f, boxes: [np.full((H, W), np.nan)] * len(boxes), "segmenter masks dropped"),  # NaN probabilities
    (lambda f, boxes: [np.array([["x"] * W] * H)] * len(boxes), "segmenter masks dropped"),  # not a mask
    (lambda f, boxes: [np.ones((H, W), bool)], "masks for"),  # fewer masks than boxes
])
def test_bad_segmenter_output_is_dropped_and_counted(adapters, make, note):
    detector = BadDetector([GOOD, ("red mug", 0.5, Box(60, 60, 100, 100))])
    grounder = Grounder(GroundingSettings("d", segmenter="s"), detector=detector, segmenter=BadSegmenter(make))
    answer = Pipeline(adapters["llava"], grounder=grounder).answer(depth_frame(), GROUND)
    assert answer.status == Status.OK and len(answer.targets) == 2
    assert all(t.mask.source == "depth_layer" and t.position is not None for t in answer.targets)
    assert note in answer.message, answer.message
    assert sum(v for k, v in grounder.drops.items() if k.startswith("segmenter")) >= 1


def test_an_out_of_box_mask_is_empty_inside_the_box_and_dropped(adapters):
    def outside(frame, boxes):
        m = np.zeros((H, W), bool)
        m[100:, 120:] = True  # nowhere near (10, 10, 50, 40)
        return [m]

    grounder = Grounder(GroundingSettings("d", segmenter="s"), detector=BadDetector([GOOD]),
                        segmenter=BadSegmenter(outside))
    answer = Pipeline(adapters["llava"], grounder=grounder).answer(depth_frame(), GROUND)
    assert answer.targets[0].mask.source == "depth_layer" and grounder.drops["segmenter mask"] == 1


class SlowText(FixedText):
    """Answers after `delay` seconds (a model that used up the query's time)."""

    def __init__(self, texts, delay):
        super().__init__(texts)
        self.delay = delay

    def generate(self, *args, **kwargs):
        time.sleep(self.delay)
        return super().generate(*args, **kwargs)


def test_the_deadline_stops_grounding_work(adapters):
    recording = Recording()
    pipeline = Pipeline(adapters["llava"], engine=SlowText("a red cup", 0.3),
                        grounder=Grounder(GroundingSettings("d"), detector=recording))
    answer = pipeline.answer(depth_frame(), GROUND, deadline=time.monotonic() + 0.2)
    assert answer.status == Status.TIMEOUT and not answer.targets and recording.phrases is None
    assert "deadline reached before the detector ran" in answer.message and answer.text == "a red cup"
    florence = Pipeline(adapters["florence2"], engine=SlowText("mug<loc_250><loc_250><loc_750><loc_750>", 0.3))
    answer = florence.answer(depth_frame(), GROUND, deadline=time.monotonic() + 0.2)
    assert answer.status == Status.TIMEOUT and len(answer.targets) == 1
    assert answer.targets[0].mask.source == "depth_layer"
    assert "deadline reached before all polygons were generated" in answer.message
    assert len(florence.engine.calls) == 1  # no polygon generation after the deadline
