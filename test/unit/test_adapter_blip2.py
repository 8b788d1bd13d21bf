"""BLIP-2 and InstructBLIP adapters: prompts, Q-Former inputs, the engine's generate() path, answer parsing."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest

from vlm_ros.core.types import Frame, Request, Task
from vlm_ros.engine.torch_engine import StopReason, TorchEngine
from vlm_ros.models.blip2 import Blip2Adapter, InstructBlipAdapter
from vlm_ros.testing.tiny_blip2 import NUM_QUERY_TOKENS, build_tiny_blip2, build_tiny_instructblip

VARIANTS = {
    # name: (adapter class, builder, language model as in the released checkpoints)
    "blip2-opt": (Blip2Adapter, build_tiny_blip2, "opt"),
    "blip2-flan-t5": (Blip2Adapter, build_tiny_blip2, "t5"),
    "instructblip-vicuna": (InstructBlipAdapter, build_tiny_instructblip, "llama"),
    "instructblip-flan-t5": (InstructBlipAdapter, build_tiny_instructblip, "t5"),
}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict:
    out = {}
    for name, (cls, build, language) in VARIANTS.items():
        out[name] = cls.from_pretrained(build(tmp_path_factory.mktemp(name), seed=0, language=language))
    return out


@pytest.fixture(scope="module")
def frame() -> Frame:
    return Frame(np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8), stamp_ns=1)


@contextmanager
def no_padding_tokens(adapter):
    """Random Flan-T5 weights emit the pad (= decoder start) token forever; suppress it in the language model's
    generation config, which both the engine's path and the reference generate() use."""
    config = adapter.model.language_model.generation_config
    old = config.suppress_tokens
    config.suppress_tokens = [adapter.tokenizer.pad_token_id]
    try:
        yield
    finally:
        config.suppress_tokens = old


def test_families_cannot_ground_and_use_generate(adapters):
    for adapter in adapters.values():
        assert adapter.can_ground is False and adapter.supports_static_cache is False


@pytest.mark.parametrize("name, task, instruction, prompt", [
    ("blip2-opt", Task.DESCRIBE, "", ""),
    ("blip2-opt", Task.ANSWER, "what color is\n the mug?", "Question: what color is the mug? Answer:"),
    ("blip2-opt", Task.GROUND, "where is the mug?", "Question: where is the mug? Answer:"),
    ("instructblip-vicuna", Task.DESCRIBE, "ignored", "A short image description:"),
    ("instructblip-vicuna", Task.ANSWER, "what color is the mug?", "Question: what color is the mug? Short answer:"),
    ("instructblip-vicuna", Task.ANSWER, "   ", "A short image description:"),
])
def test_prompts(adapters, name, task, instruction, prompt):
    assert adapters[name].prompt(Request(task, instruction)) == prompt


@pytest.mark.parametrize("name", list(VARIANTS))
def test_processor_puts_query_tokens_first(adapters, frame, name):
    adapter = adapters[name]
    inputs = adapter.prepare(frame, Request(Task.ANSWER, "what color is the mug?"))
    ids = inputs.tensors["input_ids"][0].tolist()
    image_id = adapter.model.config.image_token_id
    assert ids[:NUM_QUERY_TOKENS] == [image_id] * NUM_QUERY_TOKENS and ids.count(image_id) == NUM_QUERY_TOKENS
    assert "question : what color is the mug ? " in adapter.tokenizer.decode(ids[NUM_QUERY_TOKENS:])
    if name.startswith("instructblip"):  # the Q-Former reads the instruction too
        q_text = adapter.processor.qformer_tokenizer.decode(inputs.tensors["qformer_input_ids"][0])
        assert "what color is the mug" in q_text
    assert inputs.transform.scale_x == pytest.approx(32 / 160) and inputs.transform.scale_y == pytest.approx(32 / 120)


@pytest.mark.parametrize("task", [Task.DESCRIBE, Task.ANSWER])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_engine_tokens_equal_generate(adapters, frame, name, task):
    adapter = adapters[name]
    n = 6
    inputs = adapter.prepare(frame, Request(task, "what color is the mug?"))
    with no_padding_tokens(adapter):
        result = TorchEngine(adapter).generate(inputs, n)
        ref = adapter.model.generate(**inputs.tensors, do_sample=False, max_new_tokens=n)[0].tolist()
    if VARIANTS[name][2] == "t5":  # encoder-decoder: generate() returns decoder ids after the start id
        assert ref[0] == adapter.model.language_model.generation_config.decoder_start_token_id
        new = ref[1:]
    else:  # decoder-only: generate() returns the prompt (with the query tokens) first
        assert ref[: inputs.prompt_length] == inputs.tensors["input_ids"][0].tolist()
        new = ref[inputs.prompt_length:]
    expected = []
    for i in new:
        if i in adapter.eos_token_ids:
            break
        expected.append(i)
    assert expected, "the tiny model should generate something for this test to mean anything"
    assert result.token_ids == expected
    assert result.stop_reason == (StopReason.LENGTH if len(expected) == n else StopReason.EOS)
    assert result.text == adapter.decode_text(expected)


def test_instructblip_t5_is_marked_encoder_decoder(adapters):
    # transformers' InstructBlipConfig does not mirror its T5's flag; the engine reads it to slice the output
    assert adapters["instructblip-flan-t5"].model.config.is_encoder_decoder is True
    assert adapters["instructblip-vicuna"].model.config.is_encoder_decoder is False


@pytest.mark.parametrize("name, raw, text", [
    ("blip2-opt", "two cats laying on a couch\n", "two cats laying on a couch"),
    ("blip2-opt", "\n red \nQuestion: what is it? Answer: a mug", "red"),
    ("blip2-opt", "", ""),
    ("instructblip-vicuna", "The mug is red.\n\nIt stands  on a table.", "The mug is red. It stands on a table."),
    ("instructblip-vicuna", "red\u202e mug", "red mug"),  # control/format characters removed
])
def test_parse_returns_clean_text_and_no_boxes(adapters, frame, name, raw, text):
    adapter = adapters[name]
    request = Request(Task.ANSWER, "what color is the mug?")
    out = adapter.parse(raw, adapter.prepare(frame, request), frame, request)
    assert out.text == text and out.boxes == [] and out.dropped == []
