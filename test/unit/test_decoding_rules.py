"""The checkpoint's generation config honoured by greedy decoding (engine/decoding.py): for every engine form
(lean decoder's numpy step and torch step, the static-cache path, onnxruntime over the exported graphs) the
tokens equal transformers' `generate(do_sample=False)` with the same config (repetition penalty over prompt +
generated ids, no-repeat n-grams, suppressed tokens, forced EOS at the budget, bad words), on a tiny random LLaVA;
each rule is checked to change the answer, so that an ignored rule fails. Also: reading generation_config.json
once at load, the note on sampling settings, and the fast path when nothing is set.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from model_checks import frame, reference_tokens

from vlm_ros.core.types import Request, Task
from vlm_ros.engine import StopReason, TorchEngine
from vlm_ros.engine.decoding import DecodingRules
from vlm_ros.models.registry import load_adapter
from vlm_ros.testing.tiny import build_tiny_llava

N = 24  # new tokens per query
FORMS = ("numpy", "sliced", "static_cache", "onnxruntime")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    return load_adapter(build_tiny_llava(tmp_path_factory.mktemp("tiny_llava")))


@pytest.fixture(scope="module")
def export(adapter, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from vlm_ros.export.onnx_export import export_model

    return export_model(adapter, tmp_path_factory.mktemp("onnx"), log=lambda m: None, image_size=(120, 160))


def engine_of(form: str, adapter, export_result):
    """An engine of one form, made now: it reads the model's generation config at construction."""
    if form == "onnxruntime":
        from vlm_ros.engine.onnx_engine import OnnxEngine

        return OnnxEngine(adapter, export_result.directory, export_result.shapes, threads=1)
    if form == "static_cache":
        engine = TorchEngine(adapter, use_lean_decoder=False)
        assert engine._lean_decoder(1) is None
        return engine
    return TorchEngine(adapter, decode_form=form)


@pytest.fixture
def generation_config(adapter):
    """Set generation-config fields on the model for one test; restored afterwards."""
    original = adapter.model.generation_config

    def set_fields(**fields):
        config = copy.deepcopy(original)
        for name, value in fields.items():
            setattr(config, name, value)
        adapter.model.generation_config = config

    yield set_fields
    adapter.model.generation_config = original


def inputs_for(adapter, seed: int):
    return adapter.prepare(frame(seed), Request(Task.ANSWER, ["where is the red ball ?", "what color is it ?"][seed]))


def plain_tokens(adapter, inputs) -> list[int]:
    return reference_tokens(adapter, inputs, N)


def rule_cases(adapter, inputs) -> dict[str, dict]:
    """Generation-config fields per case, chosen from the plain greedy answer so that each one changes it."""
    plain = plain_tokens(adapter, inputs)
    eos = adapter.model.generation_config.eos_token_id
    repeated = max(set(plain), key=plain.count)
    return {
        "repetition_penalty 1.05": {"repetition_penalty": 1.05},
        "repetition_penalty 1.5": {"repetition_penalty": 1.5},
        "no_repeat_ngram_size 2": {"no_repeat_ngram_size": 2},
        "no_repeat_ngram_size 3": {"no_repeat_ngram_size": 3},
        "suppress_tokens": {"suppress_tokens": [repeated]},
        "begin_suppress_tokens": {"begin_suppress_tokens": [plain[0]]},
        "forced_eos_token_id": {"forced_eos_token_id": eos},
        "bad_words_ids": {"bad_words_ids": [[plain[0], plain[1]], [plain[3]]]},
        "all together": {"repetition_penalty": 1.2, "no_repeat_ngram_size": 3, "suppress_tokens": [repeated],
                         "forced_eos_token_id": eos},
    }


CASES = ("repetition_penalty 1.05", "repetition_penalty 1.5", "no_repeat_ngram_size 2", "no_repeat_ngram_size 3",
         "suppress_tokens", "begin_suppress_tokens", "forced_eos_token_id", "bad_words_ids", "all together")
BITES = set(CASES) - {"repetition_penalty 1.05"}  # 1.05 is too mild to move a random model's every answer


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("case", CASES)
def test_engine_tokens_equal_generate_with_the_generation_config(adapter, export, generation_config, case, seed):
    inputs = inputs_for(adapter, seed)
    plain = plain_tokens(adapter, inputs)
    assert len(plain) >= 8, "the plain answer is too short for the rules to show"
    generation_config(**rule_cases(adapter, inputs)[case])
    want = reference_tokens(adapter, inputs, N)
    if case in BITES:
        assert want != plain, f"{case} does not change generate()'s answer here: the test would not see it ignored"
    for form in FORMS:
        engine = engine_of(form, adapter, export)
        assert engine.rules.active
        got = engine.generate(inputs, N)
        assert got.token_ids == want, f"{form}: {got.token_ids} != generate() {want}"
    if "forced_eos_token_id" in rule_cases(adapter, inputs)[case] and len(want) == N - 1:
        assert got.stop_reason == StopReason.EOS  # the budget's last token was forced to EOS


def test_repetition_penalty_counts_the_prompt_ids_as_generate_does(adapter, generation_config):
    """The penalty applies to every id of the prompt (image tokens and words), not only to generated ones."""
    inputs = inputs_for(adapter, 0)
    generation_config(repetition_penalty=3.0)
    logits = TorchEngine(adapter).first_logits(inputs)
    rules = DecodingRules.from_generation_config(adapter.generation_config)
    prompt = inputs.tensors["input_ids"][0].tolist()
    scores = rules.picker(prompt, N).apply(logits.copy())
    in_prompt = np.zeros(logits.shape[0], bool)
    in_prompt[[i for i in prompt if i < logits.shape[0]]] = True
    want = np.where(logits < 0, logits * np.float32(3.0), logits / np.float32(3.0))
    assert np.array_equal(scores[in_prompt], want[in_prompt]) and np.array_equal(scores[~in_prompt], logits[~in_prompt])
    assert reference_tokens(adapter, inputs, N) == TorchEngine(adapter).generate(inputs, N).token_ids


def test_generation_config_json_is_read_once_at_load_with_a_note_for_sampling(tmp_path):
    """A checkpoint like Qwen2.5-VL-Instruct's (do_sample with temperature / top_p / top_k, repetition_penalty
    1.05): the penalty is applied, the sampling settings are named in one note."""
    model_dir = build_tiny_llava(tmp_path / "tiny")
    adapter = load_adapter(model_dir)
    config = adapter.model.generation_config
    config.do_sample, config.temperature, config.top_p, config.top_k = True, 0.1, 0.001, 1
    config.repetition_penalty, config.no_repeat_ngram_size = 1.05, 3
    config.save_pretrained(model_dir)
    engine = TorchEngine(load_adapter(model_dir))
    rules = engine.rules
    assert rules.repetition_penalty == pytest.approx(1.05) and rules.no_repeat_ngram_size == 3 and rules.active
    assert rules.describe() == "repetition_penalty 1.05, no_repeat_ngram_size 3"
    assert len(rules.notes) == 1 and "do_sample true" in rules.notes[0] and "temperature 0.1" in rules.notes[0]
    inputs = inputs_for(engine.adapter, 0)
    assert engine.generate(inputs, N).token_ids == reference_tokens(engine.adapter, inputs, N)


def test_beams_and_unsupported_settings_are_noted_not_applied():
    from transformers import GenerationConfig

    rules = DecodingRules.from_generation_config(GenerationConfig(num_beams=3, min_new_tokens=4,
                                                                  forced_bos_token_id=0, forced_eos_token_id=2))
    assert rules.forced_bos_token_id == 0 and rules.forced_eos_token_id == (2,)
    assert any("num_beams 3" in n for n in rules.notes) and any("min_new_tokens 4" in n for n in rules.notes)


def test_no_rule_set_keeps_the_plain_argmax_fast_path():
    rules = DecodingRules()
    assert not rules.active and rules.describe() == "none"
    pick = rules.picker([1, 2, 3], 8)
    logits = torch.tensor([0.1, 0.7, -0.2])
    assert pick(logits) == 1 and pick.__name__ == "_argmax"  # no copy, no context kept
    assert logits.tolist() == pytest.approx([0.1, 0.7, -0.2])


def test_numpy_and_torch_logits_give_the_same_pick():
    rules = DecodingRules(repetition_penalty=1.5, no_repeat_ngram_size=2, suppress_tokens=(4,))
    rng = np.random.default_rng(0)
    logits = [rng.standard_normal(8).astype(np.float32) for _ in range(6)]
    by_numpy, by_torch = rules.picker([1, 2, 1], 6), rules.picker(torch.tensor([1, 2, 1]), 6)
    picks = [(by_numpy(x), by_torch(torch.from_numpy(x.copy()))) for x in logits]
    assert all(a == b for a, b in picks) and all(a != 4 for a, _ in picks)


def test_encoder_decoder_graph_engine_counts_from_the_decoder_start_token(tmp_path):
    """Florence-2 (BART) on onnxruntime: generate()'s context is the decoder start token, so forced BOS fires on
    the first new token and the n-gram and penalty rules see the start token too."""
    pytest.importorskip("onnxruntime")
    from vlm_ros.engine.onnx_engine import OnnxEngine
    from vlm_ros.export.onnx_export import export_model
    from vlm_ros.testing.tiny_florence2 import build_tiny_florence2

    florence = load_adapter(build_tiny_florence2(tmp_path / "florence2", text_std=0.3))
    export_result = export_model(florence, tmp_path / "onnx", log=lambda m: None, image_size=(120, 160))
    inputs = florence.prepare(frame(0), Request(Task.DESCRIBE, ""))

    def generate_ids() -> list[int]:
        ids = florence.model.generate(**inputs.tensors, do_sample=False, max_new_tokens=N)[0, 1:].tolist()
        return ids[: next((i for i, t in enumerate(ids) if t in florence.eos_token_ids), len(ids))]

    plain = generate_ids()
    assert len(plain) >= 4
    config = florence.model.generation_config
    forced = next(t for t in plain if t != plain[0])  # a first token the model would not choose
    config.forced_bos_token_id, config.no_repeat_ngram_size, config.repetition_penalty = forced, 2, 1.5
    want = generate_ids()
    assert want[0] == forced != plain[0]
    got = OnnxEngine(florence, export_result.directory, export_result.shapes, threads=1).generate(inputs, N)
    assert got.token_ids == want


@pytest.mark.parametrize("penalty", [1.05, 1.5])
def test_qwen2_5_vl_repetition_penalty_as_its_instruct_checkpoints_set_it(tmp_path, penalty):
    """Qwen2.5-VL-Instruct's generation config sets repetition_penalty 1.05: lean decoder (3-D rope offsets) and
    onnxruntime give generate()'s tokens."""
    pytest.importorskip("onnxruntime")
    from vlm_ros.engine.onnx_engine import OnnxEngine
    from vlm_ros.export.onnx_export import export_model
    from vlm_ros.testing.tiny_qwen2_5_vl import build_tiny_qwen2_5_vl

    qwen = load_adapter(build_tiny_qwen2_5_vl(tmp_path / "qwen"))
    export_result = export_model(qwen, tmp_path / "onnx", log=lambda m: None, image_size=(120, 160))
    inputs = qwen.prepare(frame(0), Request(Task.ANSWER, "what color is the mug?"))
    plain = reference_tokens(qwen, inputs, N)
    qwen.model.generation_config.repetition_penalty = penalty
    want = reference_tokens(qwen, inputs, N)
    if penalty > 1.05:
        assert want != plain
    engines = (TorchEngine(qwen), OnnxEngine(qwen, export_result.directory, export_result.shapes, threads=1))
    assert engines[0]._lean_supported
    for engine in engines:
        assert engine.generate(inputs, N).token_ids == want
