"""Self-check before serving (engine/self_check.py, backends.check_before_serving): a non-reference backend answers
a fixed probe like the eager torch float32 reference of the same checkpoint, or it is refused with the figures.

onnxruntime on a tiny random LLaVA passes; the same export with a corrupted graph (the decode graph's output
projection negated: first-step logits still right, later tokens wrong; a prefill weight scaled: first-step logits
wrong) fails with the figures; `self_check false` skips it (logged); torch int8 and bfloat16 on the embedded model
pass within their tolerances; the eager float32 torch backend is the reference and is not checked.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from vlm_ros.backends import BackendSettings, build_pipeline, self_check_kind
from vlm_ros.engine.self_check import EOS, PROBE_TOKENS, SelfCheckError, compare, probe_frame
from vlm_ros.testing.faults import scale_onnx_weight
from vlm_ros.testing.tiny import build_tiny_llava


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


@pytest.fixture(scope="module")
def exported(tiny_dir, tmp_path_factory):
    """An onnxruntime export of the tiny model (made by the backend itself, check off) and its folder."""
    pytest.importorskip("onnxruntime")
    engines = tmp_path_factory.mktemp("engines")
    pipeline, description = build_pipeline(_onnx(tiny_dir, engines, self_check=False), lambda m: None)
    return engines, engines / description.split(", ")[-1], pipeline.engine.runner.shapes.vocab


def _onnx(model, engines, **changes) -> BackendSettings:
    return BackendSettings(backend="onnxruntime", model=str(model), engines_dir=str(engines), engine_policy="reuse",
                           engine_image_height=120, engine_image_width=160, **changes)


def _copy(exported, tmp_path):
    """A copy of the export cache, reused as is by engine_policy reuse (its key is the model's, not the graphs')."""
    engines, folder, vocab = exported
    shutil.copytree(engines, tmp_path / "engines")
    return tmp_path / "engines", tmp_path / "engines" / folder.name, vocab


def test_onnxruntime_passes_the_check_and_the_result_is_kept_and_logged(tiny_dir, exported):
    logs: list[str] = []
    pipeline, _ = build_pipeline(_onnx(tiny_dir, exported[0]), logs.append)
    result = pipeline.self_check
    assert result is not None and result.passed and result.kind == "float32"
    assert result.logit_diff < 1e-4 and result.top1_agrees
    assert result.tokens_agreeing == len(result.reference_tokens) == len(result.backend_tokens) >= 2
    assert result.seconds > 0
    assert any(m.startswith("self-check passed (float32)") for m in logs)


def test_a_corrupted_decode_graph_is_refused_with_the_figures(tiny_dir, exported, tmp_path):
    engines, folder, vocab = _copy(exported, tmp_path)
    scale_onnx_weight(folder / "decode.onnx", -1.0, columns=vocab)  # the decode step's output projection negated
    logs: list[str] = []
    with pytest.raises(SelfCheckError) as failure:
        build_pipeline(_onnx(tiny_dir, engines), logs.append)
    result = failure.value.result
    assert not result.passed and result.top1_agrees and result.logit_diff < 1e-4  # the prefill graph is intact
    assert result.tokens_agreeing < result.tokens_required == min(PROBE_TOKENS, len(result.reference_tokens))
    message = str(failure.value)
    assert message.startswith("self-check FAILED (float32)") and "greedy tokens agree" in message
    assert f"reference tokens {result.reference_tokens}" in message
    assert any("self-check FAILED" in m for m in logs)


def test_a_corrupted_prefill_graph_is_refused_on_its_logits(tiny_dir, exported, tmp_path):
    engines, folder, _ = _copy(exported, tmp_path)
    scale_onnx_weight(folder / "prefill.onnx", 3.0)  # the largest weight matrix, tripled
    with pytest.raises(SelfCheckError, match=r"first-step logits differ by up to [0-9.]+% of their range") as failure:
        build_pipeline(_onnx(tiny_dir, engines), lambda m: None)
    assert failure.value.result.logit_diff > 0.005


def test_self_check_false_serves_the_corrupted_graph_and_says_so(tiny_dir, exported, tmp_path):
    engines, folder, vocab = _copy(exported, tmp_path)
    scale_onnx_weight(folder / "decode.onnx", -1.0, columns=vocab)
    logs: list[str] = []
    pipeline, _ = build_pipeline(_onnx(tiny_dir, engines, self_check=False), logs.append)
    assert pipeline.self_check is None
    assert any("self-check off (self_check false)" in m for m in logs)


def test_torch_int8_and_bfloat16_pass_and_float32_is_the_reference():
    """The embedded model (trained weights): reduced precision stays within its kind's tolerance."""
    for changes, kind in (({"quantize": "int8"}, "int8"), ({"quantize": "int4"}, "int4"),
                          ({"dtype": "bfloat16"}, "bfloat16")):
        settings = BackendSettings(backend="torch", device="cpu", **changes)
        pipeline, _ = build_pipeline(settings, lambda m: None)
        result = pipeline.self_check
        assert result is not None and result.kind == kind and result.passed, result.summary()
    reference, _ = build_pipeline(BackendSettings(backend="torch", device="cpu"), lambda m: None)
    assert reference.self_check is None and self_check_kind(BackendSettings(device="cpu"), reference.engine) is None


def test_a_reference_that_would_not_fit_in_memory_is_not_loaded_and_the_skip_is_said(monkeypatch):
    """On a Jetson the float32 copy shares the memory the model already uses: loading it could get the node killed."""
    from vlm_ros.memory import AVAILABLE_OVERRIDE_ENV

    monkeypatch.setenv(AVAILABLE_OVERRIDE_ENV, "1")  # 1 MiB left on the host
    logs = []
    pipeline, _ = build_pipeline(BackendSettings(backend="torch", device="cpu", dtype="bfloat16"), logs.append)
    assert pipeline.self_check is None and pipeline.self_check_note.startswith("self-check SKIPPED")
    assert "MiB available" in pipeline.self_check_note and pipeline.self_check_note in logs
    assert not any("loading the float32 reference" in m for m in logs)


def test_compare_figures_ties_and_non_finite_logits():
    ref = np.array([0.0, 1.0, 5.0, 4.99], np.float32)  # range 5: a near tie between tokens 2 and 3
    same = compare("float32", ref, [2, 7, EOS], ref, [2, 7, EOS])
    assert same.passed and same.logit_diff == 0 and same.tokens_agreeing == 3 and same.tokens_required == 3
    tie = compare("float16", ref, [2, 7, 8, 9, EOS], np.array([0, 1, 4.99, 5.0]), [3, 7, 8, 9, EOS])
    assert tie.top1_agrees and tie.tokens_agreeing == 0 and not tie.passed  # tokens must still agree
    clear = np.array([0.0, 1.0, 5.0, 3.0], np.float32)  # token 2 leads by 2, 40% of the range
    far = compare("float16", clear, [2], np.array([0, 1, 4.0, 5.0]), [3])
    assert not far.top1_agrees and far.logit_diff == pytest.approx(0.4) and not far.passed
    nan = compare("int8", ref, [2], np.array([0, np.nan, 5.0, 4.99]), [2])
    assert not nan.passed and "inf%" in nan.summary()
    short = compare("float32", ref, [EOS], ref, [EOS])  # the reference ends at once: one token to agree on
    assert short.passed and short.tokens_required == 1


def test_the_probe_frame_is_fixed():
    a, b = probe_frame(120, 160), probe_frame(120, 160)
    assert np.array_equal(a.image, b.image) and a.image.shape == (120, 160, 3) and len(np.unique(a.image)) > 10
