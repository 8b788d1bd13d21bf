"""The memory estimate against real parameter and buffer bytes, the admission decision, and int8 decoder weights."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vlm_ros.memory import (
    AVAILABLE_OVERRIDE_ENV,
    Available,
    MemoryAdmissionError,
    MiB,
    admit,
    available_bytes,
    check_fits,
    estimate,
    image_geometry,
    kv_buffer_tokens,
    kv_cache_bytes,
)
from vlm_ros.models.registry import load_adapter
from vlm_ros.quantize import Int4Linear, Int8Linear, decoder_weight_bytes, quantize_decoder

FACTS = json.loads((Path(__file__).parent / "released_checkpoints.json").read_text())


def unique_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def persistent_bytes(model: torch.nn.Module) -> int:
    """Parameters and saved buffers (int8 weights, scales), each tensor once; not rotary tables."""
    return unique_bytes([*model.parameters(), *(b for name, b in model.named_buffers()
                                                 if name.rsplit(".", 1)[-1] in ("weight_int8", "scale", "packed",
                                                                                  "scale_zero"))])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_weight_estimate_equals_the_loaded_models_parameter_bytes(tmp_path, dtype):
    from vlm_ros.testing.tiny import build_tiny_llava

    for model_dir in (build_tiny_llava(tmp_path / "tiny"), ""):
        adapter = load_adapter(model_dir, dtype=getattr(torch, dtype))
        assert estimate(model_dir, dtype=dtype).weights == persistent_bytes(adapter.model)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_weight_estimate_equals_the_quantized_models_bytes(mode):
    adapter = load_adapter("")
    layers = quantize_decoder(adapter.model, mode)
    assert layers == 6 * 7  # q, k, v, o, gate, up, down in each of the embedded model's 6 layers
    packed = estimate("", dtype="float32", quantize=mode)
    assert packed.weights == persistent_bytes(adapter.model)
    # loading holds the float32 weights before they are packed: the peak is the larger of loading and running
    assert packed.loading_weights == estimate("", dtype="float32").weights
    assert packed.total == max(packed.running, packed.loading)


def test_kv_estimate_equals_the_engines_kv_buffers():
    from vlm_ros.engine.lean_decoder import LeanDecoder

    adapter = load_adapter("")
    tokens = kv_buffer_tokens(300)
    assert tokens == 512 and kv_buffer_tokens(1024) == 1024 and kv_buffer_tokens(1025) == 2048
    decoder = LeanDecoder(adapter.model, max_len=tokens)
    assert kv_cache_bytes(adapter.model.config.text_config.to_dict(), tokens, 4) == decoder.k.nbytes + decoder.v.nbytes


def test_encoder_decoder_kv_estimate_equals_generates_self_and_cross_attention_cache(tmp_path):
    """Florence-2 (BART): the decoder's self-attention K/V over the answer and cross-attention K/V over the
    encoder's tokens, in every decoder layer."""
    from transformers import Florence2ForConditionalGeneration, Florence2Processor

    from vlm_ros.testing.tiny_florence2 import build_tiny_florence2

    path = build_tiny_florence2(tmp_path / "florence2")
    model = Florence2ForConditionalGeneration.from_pretrained(path, local_files_only=True).eval()
    processor = Florence2Processor.from_pretrained(path, local_files_only=True)
    inputs = processor(images=np.zeros((32, 32, 3), np.uint8), text="<OD>", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                             return_dict_in_generate=True)
    cache = out.past_key_values
    measured = {name: sum(layer.keys.nbytes + layer.values.nbytes for layer in part.layers)
                for name, part in (("self", cache.self_attention_cache), ("cross", cache.cross_attention_cache))}
    decoder_tokens = cache.self_attention_cache.get_seq_length()
    encoder_tokens = cache.cross_attention_cache.get_seq_length()
    text = json.loads((path / "config.json").read_text())["text_config"]
    assert measured["self"] > 0 and measured["cross"] > 0 and encoder_tokens > 17  # image tokens and the prompt
    assert kv_cache_bytes(text, decoder_tokens, 4) == measured["self"]
    assert kv_cache_bytes(text, decoder_tokens, 4, encoder_tokens=encoder_tokens) == sum(measured.values())
    est = estimate(path, max_tokens=256)
    assert est.kv_cache == kv_cache_bytes(text, 256, 4, encoder_tokens=est.image.tokens + 64)


def test_image_token_counts_match_the_released_processors_at_640x480():
    qwen = FACTS["Qwen2.5-VL-3B-Instruct"]
    geometry = image_geometry("qwen2_5_vl", {"vision_config": {"spatial_merge_size": 2}},
                              qwen["processor_settings"], 480, 640)
    assert geometry.tokens == qwen["image_tokens_640x480"]
    smol = FACTS["SmolVLM-256M-Instruct"]
    s = smol["processor_settings"]
    processor = {"size": {"longest_edge": s["longest_edge"]}, "max_image_size": {"longest_edge": s["tile"]},
                 "image_seq_len": s["image_seq_len"], "do_image_splitting": True}
    assert image_geometry("idefics3", {"vision_config": {"patch_size": 16}}, processor, 480, 640).tokens == \
        smol["image_tokens_640x480"]


def test_admission_refuses_with_the_figures_and_names_settings_that_fit():
    need = estimate("", max_tokens=8192)
    shorter = estimate("", max_tokens=512)
    available = Available(int((need.total + shorter.total) / 2), "test")
    refused = admit("", need, available, margin_bytes=0)
    assert not refused.fits
    message = refused.message()
    assert f"{need.total / MiB:.0f} MiB" in message and f"available {available.bytes / MiB:.0f} MiB" in message
    assert any(s.startswith("engine_max_tokens") for s in refused.suggestions)
    fitting = int(refused.suggestions[-1].split()[-1])
    assert estimate("", max_tokens=fitting).total <= available.bytes
    assert admit("", shorter, available, margin_bytes=0).fits
    assert not admit("", shorter, available, margin_bytes=available.bytes).fits  # the margin counts


def test_available_override_is_read_and_check_fits_raises(monkeypatch):
    monkeypatch.setenv(AVAILABLE_OVERRIDE_ENV, "1")
    assert available_bytes("cpu").bytes == MiB
    with pytest.raises(MemoryAdmissionError, match="refused"):
        check_fits("", margin_mb=0)
    monkeypatch.delenv(AVAILABLE_OVERRIDE_ENV)
    assert available_bytes("cpu").bytes > 0  # MemAvailable


def test_admission_reads_the_configured_gpus_free_memory(monkeypatch):
    """cuda:1 is GPU 1's free memory, not the current device's (the estimate itself keeps only cpu | cuda)."""
    free = {0: 64 * 1024 * MiB, 1: 100 * MiB}  # GPU 0 has room, GPU 1 has not
    asked = []

    def mem_get_info(device):
        asked.append(device)
        return free[device.index if device.index is not None else 0], 80 * 1024 * MiB

    monkeypatch.delenv(AVAILABLE_OVERRIDE_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    assert check_fits("", margin_mb=0, device="cuda:0").fits
    with pytest.raises(MemoryAdmissionError, match="available 100 MiB \\(CUDA free memory on cuda:1\\)"):
        check_fits("", margin_mb=0, device="cuda:1")
    assert [d.index for d in asked] == [0, 1]


def test_int4_linear_computes_with_its_dequantized_weight():
    torch.manual_seed(0)
    linear = torch.nn.Linear(192, 48)
    q = Int4Linear.quantize(linear)
    assert q.group == 64 and q.packed.numel() == 48 * 192 // 2  # 192 inputs: groups of 64, two weights a byte
    x = torch.randn(5, 192)
    expected = torch.nn.functional.linear(x, q.dequantized(), linear.bias)
    assert q(x[None]).shape == (1, 5, 48) and q(x).dtype == torch.float32
    assert torch.allclose(q(x), expected, atol=0.02, rtol=0.02)
    groups = linear.weight.detach().reshape(48, 3, 64)
    half_step = ((groups.amax(-1) - groups.amin(-1)) / 30).repeat_interleave(64, dim=1)  # (48, 192)
    assert ((q.dequantized() - linear.weight).abs() <= half_step * 1.05 + 1e-3).all()  # bf16 scale and zero
    with pytest.raises(ValueError, match="int4"):
        Int4Linear.quantize(torch.nn.Linear(100, 48))  # inputs not divisible by a group size


def test_int8_linear_computes_with_its_dequantized_weight():
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 40)
    q = Int8Linear.quantize(linear)
    for rows in (1, 15, 64):  # the int8 kernel (bf16 activations) below PREFILL_ROWS, the dequantised weight above
        x = torch.randn(rows, 96)
        expected = torch.nn.functional.linear(x, q.dequantized(), linear.bias)
        assert q(x[None]).shape == (1, rows, 40) and q(x).dtype == torch.float32
        assert torch.allclose(q(x), expected, atol=0.05, rtol=0.02)
    assert (q.dequantized() - linear.weight).abs().max() <= linear.weight.abs().max() / 127  # half a step per row


@pytest.mark.parametrize(("mode", "weight_share"), [("int8", 0.55), ("int4", 0.30)])
def test_quantized_embedded_model_keeps_greedy_tokens_and_shrinks_decoder_weights(mode, weight_share):
    """int8: the issue's targets (<= 55% of bf16's decoder bytes, >= 90% equal greedy answers); int4: the same
    share of answers and its measured 29.6% of bf16's bytes."""
    from vlm_ros.embedded.model import load
    from vlm_ros.embedded.prompt import build_prompt
    from vlm_ros.embedded.scenes import render_scene
    from vlm_ros.embedded.tasks import KINDS, make_example
    from vlm_ros.embedded.train import EVAL_SEED_START

    model, processor = load()
    quantized = copy.deepcopy(model)
    quantize_decoder(quantized, mode)
    bf16_bytes = decoder_weight_bytes(copy.deepcopy(model).to(torch.bfloat16))
    assert decoder_weight_bytes(quantized) <= weight_share * bf16_bytes
    rng, equal = np.random.default_rng(7), 0
    for i in range(20):  # held-out scenes, one question kind after another
        scene = render_scene(EVAL_SEED_START + 500 + i)
        try:
            example = make_example(scene, rng, KINDS[i % len(KINDS)])
        except ValueError:
            example = make_example(scene, rng, "describe")
        inputs = processor(images=scene.image, text=build_prompt(example.instruction), return_tensors="pt")
        with torch.inference_mode():
            a = model.generate(**inputs, max_new_tokens=64, do_sample=False)
            b = quantized.generate(**inputs, max_new_tokens=64, do_sample=False)
        equal += a.tolist() == b.tolist()
    assert equal >= 18, f"{mode} greedy tokens equal fp32's on {equal}/20 questions"


@pytest.mark.parametrize(("mode", "form"), [("int8", "numpy"), ("int8", "sliced"), ("int4", "sliced")])
def test_torch_engine_on_quantized_weights_equals_generate(mode, form):
    """The lean decoder's numpy step (the CPU default with int8) and its sliced torch step (int8; int4's default)
    give generate()'s greedy tokens (generate runs the model's own forward through the same quantised layers)."""
    from vlm_ros.core.types import Frame, Request, Task
    from vlm_ros.engine import TorchEngine

    adapter = load_adapter("")
    quantize_decoder(adapter.model, mode)
    image = (np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)
    inputs = adapter.prepare(Frame(image, 1), Request(Task.DESCRIBE, "", max_new_tokens=16))
    engine = TorchEngine(adapter, decode_form=None if mode == "int4" or form == "numpy" else form)
    result = engine.generate(inputs, 16)
    assert engine._lean is not None and engine._lean.form == form
    with torch.inference_mode():
        out = adapter.model.generate(**inputs.tensors, max_new_tokens=16, do_sample=False)
    expected = [t for t in out[0, inputs.prompt_length:].tolist() if t not in adapter.eos_token_ids]
    assert result.token_ids == expected


@pytest.mark.parametrize("family", ["florence2", "idefics3", "qwen2_5_vl", "paligemma", "blip2"])
def test_every_tiny_family_gets_an_estimate(tmp_path, family):
    """The estimate reads each family's config layout (Florence-2's DaViT has one patch size per stage)."""
    import importlib

    builder = {"florence2": "tiny_florence2", "idefics3": "tiny_idefics3", "qwen2_5_vl": "tiny_qwen2_5_vl",
               "paligemma": "tiny_paligemma", "blip2": "tiny_blip2"}[family]
    module = importlib.import_module(f"vlm_ros.testing.{builder}")
    model_dir = getattr(module, f"build_tiny_{family}")(tmp_path / family)
    est = estimate(model_dir)
    assert est.weights > 0 and est.vision_activations > 0
