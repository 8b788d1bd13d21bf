"""ONNX export + onnxruntime parity with torch, on the embedded model (whatever weights ship) and tiny LLaVA,
SmolVLM (idefics3), Qwen2.5-VL, PaliGemma, BLIP-2 (Llama, OPT and Flan-T5 language models), InstructBLIP (Vicuna /
Llama, Flan-T5) and Florence-2 models (the last three families: TorchEngine runs their generate()).

Logits of the exported prefill and decode graphs match the torch model's own forward, and OnnxEngine's greedy
tokens equal TorchEngine's over a generated answer. Also: the backend `onnxruntime` end to end through the
Pipeline, the export cache reused on a second start, the `build_engines --onnx-only` command, a frame of another
size refused by a frame-sized export, and the refusal of families (and decoders) that have no export.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from model_checks import frame

from vlm_ros.backends import BackendSettings, build_pipeline
from vlm_ros.core.types import Request, Status, Task
from vlm_ros.engine import StopReason, TorchEngine, names
from vlm_ros.engine.graph_engine import mrope_positions
from vlm_ros.engine.onnx_engine import OnnxEngine
from vlm_ros.export.onnx_export import (
    UnsupportedModelError,
    _decoder_stack,
    _seq2seq_parts,
    check_exportable,
    export_model,
)
from vlm_ros.models.registry import default_model_dir, load_adapter
from vlm_ros.testing.tiny import build_tiny_llava
from vlm_ros.testing.tiny_blip2 import build_tiny_blip2, build_tiny_instructblip
from vlm_ros.testing.tiny_florence2 import build_tiny_florence2
from vlm_ros.testing.tiny_idefics3 import build_tiny_idefics3
from vlm_ros.testing.tiny_paligemma import build_tiny_paligemma
from vlm_ros.testing.tiny_qwen2_5_vl import build_tiny_qwen2_5_vl

pytest.importorskip("onnxruntime")

QUESTIONS = ["where is the red ball ?", "what color is the cube ?", ""]  # "" = describe
FRAME_SIZE = (120, 160)  # model_checks.frame's (H, W): what the frame-sized families are exported for
TINY = {"tiny_idefics3": build_tiny_idefics3, "tiny_qwen2_5_vl": build_tiny_qwen2_5_vl,
        "tiny_paligemma": build_tiny_paligemma,
        # seeds / weight spread chosen so that the random models' greedy answers differ per prompt
        "tiny_blip2_llama": lambda path: build_tiny_blip2(path, language="llama"),
        "tiny_blip2_opt": lambda path: build_tiny_blip2(path, language="opt", text_std=0.3),
        "tiny_instructblip_llama": lambda path: build_tiny_instructblip(path, seed=2, language="llama"),
        # encoder-decoders: random BART / T5 at the default init answer EOS or pad at once
        "tiny_blip2_t5": lambda path: build_tiny_blip2(path, language="t5", text_std=0.3),
        "tiny_instructblip_t5": lambda path: build_tiny_instructblip(path, language="t5", text_std=0.3),
        "tiny_florence2": lambda path: build_tiny_florence2(path, text_std=0.3)}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


@pytest.fixture(scope="module", params=["embedded", "tiny_llava", *TINY])
def exported(request, tiny_dir, tmp_path_factory):
    if request.param in TINY:
        model_dir = TINY[request.param](tmp_path_factory.mktemp(request.param))
    else:
        model_dir = "" if request.param == "embedded" else tiny_dir
    adapter = load_adapter(model_dir)
    result = export_model(adapter, tmp_path_factory.mktemp(f"onnx_{request.param}"), log=lambda m: None,
                          image_size=FRAME_SIZE)
    return adapter, OnnxEngine(adapter, result.directory, result.shapes, threads=1)


def request_for(q: str) -> Request:
    return Request(Task.ANSWER, q) if q else Request(Task.DESCRIBE, "")


def encode(runner, inputs):
    """The vision graph on a query's inputs (InstructBLIP's also takes the instruction's Q-Former tokens)."""
    t = inputs.tensors
    text = (t["qformer_input_ids"], t["qformer_attention_mask"]) if runner.shapes.qformer_text_max else None
    return runner.encode(t["pixel_values"], text)


def test_export_writes_the_three_graphs_with_the_shared_tensor_names(exported):
    import onnx

    adapter, engine = exported
    shapes = engine.runner.shapes
    layers = shapes.layers
    directory = engine.runner.sessions  # sessions were built from the files: check their declared I/O
    io = {g: ([i.name for i in s.get_inputs()], [o.name for o in s.get_outputs()]) for g, s in directory.items()}
    assert io["vision"] == (names.vision_inputs(bool(shapes.qformer_text_max)), [names.IMAGE_FEATURES])
    assert bool(shapes.qformer_text_max) == (adapter.family == "instructblip")
    seq2seq = shapes.encoder_decoder
    assert io["prefill"] == (names.prefill_inputs(shapes.mrope), names.prefill_outputs(layers, seq2seq))
    assert io["decode"] == (names.decode_inputs(layers, shapes.mrope, seq2seq),
                            [names.LOGITS, *names.present_names(layers)])
    assert seq2seq == adapter.model.config.is_encoder_decoder
    assert (names.cross_key(0) in io["prefill"][1]) == (names.cross_key(0) in io["decode"][0]) == seq2seq
    assert shapes.mrope == (adapter.family == "qwen2_5_vl")
    assert (names.POSITION_IDS in io["prefill"][0]) == (names.ROPE_DELTA in io["decode"][0]) == shapes.mrope
    if seq2seq:
        decoder = _seq2seq_parts(adapter.model)[1]
        assert layers == len(getattr(decoder, "layers", None) or decoder.block)
    else:
        assert layers == len(_decoder_stack(adapter.model)[0].layers)
    assert onnx is not None


def decoder_start(adapter) -> int:
    """An encoder-decoder's decoder start token, from the generation config its generate() reads."""
    lm = adapter.model.language_model if adapter.family != "florence2" else adapter.model
    return int(lm.generation_config.decoder_start_token_id)


def reference_logits(adapter, inputs, ids) -> np.ndarray:
    """The torch model's own full forward over the prompt + `ids`' generated tokens: last-position logits
    (encoder-decoder: `ids` are the decoder's tokens, from its start token)."""
    t = {k: v for k, v in inputs.tensors.items() if k != "attention_mask"}
    if adapter.model.config.is_encoder_decoder:
        with torch.inference_mode():
            return adapter.model(**t, decoder_input_ids=ids).logits[0, -1].numpy()
    extra = ids.shape[1] - t["input_ids"].shape[1]
    # generated tokens are text (Qwen's token types) and PaliGemma's causal suffix (token type 1)
    for name, fill in (("mm_token_type_ids", 0), ("token_type_ids", 1)):
        if name in t:
            t[name] = torch.cat([t[name], t[name].new_full((1, extra), fill)], dim=1)
    with torch.inference_mode():
        if adapter.family in ("blip2", "instructblip"):  # a generated token may be the image token id, which
            # the outer forward would take for a query slot: the model's own image features and language model
            model, prompt = adapter.model, t["input_ids"].shape[1]
            vision = {k: v for k, v in t.items() if k == "pixel_values" or k.startswith("qformer_")}
            features = model.get_image_features(**vision, return_dict=True).pooler_output[0]
            embeds = model.get_input_embeddings()(ids)
            embeds[0, :prompt][t["input_ids"][0] == model.config.image_token_id] = features
            return model.language_model(inputs_embeds=embeds).logits[0, -1].numpy()
        return adapter.model(**{**t, "input_ids": ids}).logits[0, -1].numpy()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prefill_and_decode_logits_match_the_torch_forward(exported, seed):
    adapter, engine = exported
    inputs = adapter.prepare(frame(seed), request_for(QUESTIONS[seed]))
    runner = engine.runner
    features = encode(runner, inputs)
    rope = mrope_positions(adapter.model, inputs.tensors) if runner.shapes.mrope else None
    logits, state = runner.prefill(inputs.tensors["input_ids"], features, rope)
    seq2seq = runner.shapes.encoder_decoder
    ids = torch.tensor([[decoder_start(adapter)]]) if seq2seq else inputs.tensors["input_ids"]
    for _ in range(4):  # the prefill, then three decode steps, each against a full torch forward
        ref = reference_logits(adapter, inputs, ids)
        assert np.abs(logits - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())
        token = int(logits.argmax())
        assert token == int(ref.argmax())
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
        logits, state = runner.step(token, state)
    layers = runner.shapes.layers
    assert state[2 * layers - 1].shape[2] == ids.shape[1]  # the cache grew by one per step
    if seq2seq:  # the cross K / V of the encoder output follow the cache, unchanged by the steps
        assert len(state) == 4 * layers and state[-1].shape[2] == inputs.prompt_length
    if runner.shapes.mrope:  # Qwen2.5-VL: the state starts with the prompt's rope delta, unchanged by the steps
        assert int(state[0][0]) == rope[1] != 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_tokens_equal_the_torch_engine(exported, seed):
    adapter, engine = exported
    inputs = adapter.prepare(frame(seed), request_for(QUESTIONS[seed]))
    want = TorchEngine(adapter).generate(inputs, 40, ignore_eos=True)
    got = engine.generate(inputs, 40, ignore_eos=True)
    assert len(got.token_ids) == 40
    if adapter.supports_static_cache:
        assert got.token_ids == want.token_ids and got.text == want.text
        natural = engine.generate(inputs, 40)  # with EOS: the same answer TorchEngine gives
        assert natural.token_ids == TorchEngine(adapter).generate(inputs, 40).token_ids
        return
    # TorchEngine runs generate() for these families, and its token list leaves out generated pad tokens (the
    # graph engine keeps them; the text is the same up to spacing: pad decodes to nothing); generate()'s ignore_eos
    # (min_new_tokens) takes the best non-EOS token where EOS wins, the graph engine takes EOS and goes on:
    # the forced answers are equal up to the first EOS.
    pad = adapter.model.generation_config.pad_token_id
    eos = [i for i, t in enumerate(got.token_ids) if t in adapter.eos_token_ids]
    forced = [t for t in got.token_ids[: eos[0] if eos else 40] if t != pad]
    assert forced == want.token_ids[: len(forced)]
    natural = engine.generate(inputs, 40)  # with EOS
    reference = TorchEngine(adapter).generate(inputs, 40)
    assert [t for t in natural.token_ids if t != pad] == reference.token_ids
    assert natural.text.split() == reference.text.split()
    assert len(natural.token_ids) >= 3


def test_streaming_deadline_cancel_and_vision_cache(exported):
    adapter, engine = exported
    f = frame(0)
    inputs = adapter.prepare(f, request_for(QUESTIONS[0]))
    engine.clear_vision_cache()
    full = engine.generate(inputs, 30, ignore_eos=True)
    assert not full.vision_cached
    again = engine.generate(adapter.prepare(f, request_for(QUESTIONS[1])), 5)
    if engine.runner.shapes.qformer_text_max:  # InstructBLIP: the features depend on the instruction too
        assert not again.vision_cached
        again = engine.generate(adapter.prepare(f, request_for(QUESTIONS[0])), 5)
    assert again.vision_cached and again.vision_encode_s == 0.0
    seen = []
    streamed = engine.generate(inputs, 30, on_text=lambda t, n: seen.append((t, n)), ignore_eos=True)
    assert streamed.text == full.text and seen[-1] == (full.text, 30)
    assert [n for _, n in seen] == list(range(1, 31))

    def slow(text, n):
        time.sleep(0.02)

    late = engine.generate(inputs, 200, deadline=time.monotonic() + 0.05, on_text=slow, ignore_eos=True)
    assert late.stop_reason == StopReason.DEADLINE and 1 <= len(late.token_ids) < 10
    cancel = threading.Event()
    stopped = engine.generate(inputs, 200, cancel=cancel, on_text=lambda t, n: n == 2 and cancel.set(),
                              ignore_eos=True)
    assert stopped.stop_reason == StopReason.CANCELLED and len(stopped.token_ids) == 2


def test_a_prompt_without_the_exported_image_token_count_is_refused(exported):
    adapter, engine = exported
    inputs = adapter.prepare(frame(0), request_for(QUESTIONS[0]))
    ids = inputs.tensors["input_ids"]
    inputs.tensors["input_ids"] = ids[:, ids[0] != adapter.model.config.image_token_id][:, :5]
    with pytest.raises(ValueError, match="image tokens"):
        engine.generate(inputs, 3)


def test_a_frame_of_another_size_is_refused_by_a_frame_sized_export(exported):
    adapter, engine = exported
    inputs = adapter.prepare(frame(0, h=40, w=200), request_for(QUESTIONS[0]))  # Idefics3: 3 tiles, not 5
    if not engine.runner.shapes.image_size:  # LLaVA / PaliGemma: the processor resizes every frame alike
        assert len(engine.generate(inputs, 3, ignore_eos=True).token_ids) == 3
        return
    with pytest.raises(ValueError, match="exported for 120x160 frames"):
        engine.generate(inputs, 3)


def test_a_family_without_an_export_is_refused():
    class Other:
        pass

    Other.family = "other"
    with pytest.raises(UnsupportedModelError, match="'other' is not supported"):
        check_exportable(Other())


def test_paligemma2_gemma2_decoder_is_refused_with_the_reason(tmp_path):
    adapter = load_adapter(build_tiny_paligemma(tmp_path, version=2))
    with pytest.raises(UnsupportedModelError, match="paligemma model is not exportable: Gemma 2 layers"):
        check_exportable(adapter)


def test_backend_onnxruntime_answers_through_the_pipeline_and_reuses_its_export(tiny_dir, tmp_path):
    logs: list[str] = []
    settings = BackendSettings(backend="onnxruntime", model=str(tiny_dir), engines_dir=str(tmp_path),
                               engine_policy="rebuild")
    pipeline, description = build_pipeline(settings, logs.append)
    assert description.startswith("onnxruntime (cpu), float32") and "tiny_llava" in description
    assert any("building" in m for m in logs) and (tmp_path / description.split(", ")[-1] / "manifest.json").is_file()
    answer = pipeline.answer(frame(0), Request(Task.ANSWER, "where is the red ball ?", max_new_tokens=6))
    assert answer.status == Status.OK and answer.generated_tokens >= 1 and answer.timings.prefill > 0
    torch_answer = build_pipeline(BackendSettings(backend="torch", model=str(tiny_dir)), logs.append)[0].answer(
        frame(0), Request(Task.ANSWER, "where is the red ball ?", max_new_tokens=6))
    assert answer.text == torch_answer.text

    logs.clear()
    build_pipeline(BackendSettings(backend="onnxruntime", model=str(tiny_dir), engines_dir=str(tmp_path),
                                   engine_policy="refuse"), logs.append)
    assert any(m.startswith("reusing onnx cache") for m in logs) and not any("building" in m for m in logs)


def test_backend_onnxruntime_exports_a_frame_sized_family_for_the_configured_frame_size(tmp_path):
    model_dir = build_tiny_qwen2_5_vl(tmp_path / "tiny_qwen")
    settings = BackendSettings(backend="onnxruntime", model=str(model_dir), engines_dir=str(tmp_path / "engines"),
                               engine_policy="rebuild", engine_image_height=FRAME_SIZE[0],
                               engine_image_width=FRAME_SIZE[1])
    pipeline, description = build_pipeline(settings, lambda m: None)
    assert pipeline.engine.runner.shapes.image_size == FRAME_SIZE and "qwen2_5_vl-onnx" in description
    request = Request(Task.ANSWER, "what color is the mug?", max_new_tokens=6)
    answer = pipeline.answer(frame(0), request)
    assert answer.status == Status.OK and answer.generated_tokens >= 1
    torch_pipeline = build_pipeline(BackendSettings(backend="torch", model=str(model_dir)), lambda m: None)[0]
    assert answer.text == torch_pipeline.answer(frame(0), request).text


def test_backend_auto_without_tensorrt_falls_back_to_torch_and_says_so(tiny_dir):
    pytest.importorskip("torch")
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available():
        pytest.skip("TensorRT and CUDA are present here: auto does not fall back")
    logs: list[str] = []
    _, description = build_pipeline(BackendSettings(backend="auto", model=str(tiny_dir)), logs.append)
    assert description.startswith("torch (") and "[auto fallback:" in description
    assert any("falling back to torch" in m for m in logs)


def test_build_engines_onnx_only_command(tiny_dir, tmp_path, capsys):
    from vlm_ros.export.build_engines import main

    assert main(["--model", str(tiny_dir), "--engines-dir", str(tmp_path), "--onnx-only"]) == 0
    out = capsys.readouterr().out
    assert "exported prefill.onnx" in out and "ready:" in out
    assert main(["--model", str(tiny_dir), "--engines-dir", str(tmp_path), "--onnx-only", "--policy", "refuse"]) == 0
    assert "reusing onnx cache" in capsys.readouterr().out
    assert main(["--model", str(tiny_dir), "--engines-dir", "relative/dir", "--onnx-only"]) == 1
    assert "absolute path" in capsys.readouterr().out


def test_embedded_weights_dir_is_the_default_model():
    assert (default_model_dir() / "config.json").is_file()
