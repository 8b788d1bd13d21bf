"""The generation engine and the pipeline on a tiny random LLaVA (CPU, no downloads)."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from model_checks import frame, reference_tokens

from vlm_ros.core.types import Request, Status, Task
from vlm_ros.engine import StopReason, TorchEngine
from vlm_ros.models.llava import LlavaAdapter
from vlm_ros.pipeline import Pipeline
from vlm_ros.testing.tiny import build_tiny_llava


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    return LlavaAdapter.from_pretrained(build_tiny_llava(tmp_path_factory.mktemp("tiny_llava")))


@pytest.mark.parametrize("lean,form,threads", [(True, "numpy", 2), (True, "numpy", 1), (True, "sliced", None),
                                               (True, "static", None), (False, None, None)],
                         ids=["lean-numpy-torch-products", "lean-numpy-1-thread", "lean-sliced", "lean-static-step",
                              "hf-static-cache"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_engine_tokens_equal_generate(adapter, lean, form, threads, seed):
    inputs = adapter.prepare(frame(seed), Request(Task.ANSWER, "where is the red ball ?"))
    engine = TorchEngine(adapter, use_lean_decoder=lean, decode_form=form)
    assert engine._lean_supported == lean  # the tiny LLaVA's Llama decoder is a supported one
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:  # the numpy step takes its matrix products from torch with more than one thread, from numpy with one
        result = engine.generate(inputs, 40)
    finally:
        torch.set_num_threads(before)
    if form == "numpy":
        assert engine._lean._numpy.threaded == (threads > 1)
    assert result.token_ids == reference_tokens(adapter, inputs, 40)
    assert len(result.token_ids) > 5  # random weights still produce a real sequence to compare


def test_the_cache_keyword_is_the_one_the_installed_transformers_takes(adapter):
    """The forward fills the cache it was given and returns it (under a name it does not know, the cache would
    vanish into the forward's **kwargs and a fresh one be made)."""
    from transformers import StaticCache

    from vlm_ros.engine.hf_compat import cache_kwargs, output_cache

    inputs = adapter.prepare(frame(0), Request(Task.ANSWER, "where is the red ball ?"))
    cache = StaticCache(config=adapter.model.config, max_cache_len=inputs.prompt_length + 4)
    with torch.inference_mode():
        out = adapter.model(**adapter.forward_inputs(inputs), mm_encoder_outputs=adapter.encode_vision(inputs),
                            **cache_kwargs(cache), use_cache=True)
    assert output_cache(out) is cache and cache.get_seq_length() == inputs.prompt_length


def test_cpu_default_decode_form_is_numpy_for_float32_and_torch_otherwise(adapter):
    """The adapter tests of other families (GQA, q/k/v biases, Qwen's rope offset) cover the default form."""
    from vlm_ros.engine.lean_decoder import LeanDecoder

    assert LeanDecoder(adapter.model, 64).form == "numpy"
    half = LlavaAdapter.from_pretrained(adapter.model.name_or_path, dtype=torch.bfloat16)
    assert LeanDecoder(half.model, 64).form == "sliced"
    with pytest.raises(ValueError, match="numpy needs a float32 CPU model"):
        LeanDecoder(half.model, 64, form="numpy")


def test_decode_forms_fuse_projections_into_the_models_own_weights(adapter):
    """One matrix product for q/k/v and one for gate/up, without a second copy of the weights (the tokens are
    checked against generate() above, whose forward then runs on the fused weights' row slices)."""
    from vlm_ros.engine.lean_decoder import LeanDecoder, language_model

    layer = language_model(adapter.model).layers[0]
    q, k, v = (layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight, layer.self_attn.v_proj.weight)
    before = [w.detach().clone() for w in (q, k, v)]
    first = LeanDecoder(adapter.model, 64, form="sliced")
    qkv, bias = first._qkv[0].weight, first._qkv[0].bias
    assert qkv.shape[0] == q.shape[0] + k.shape[0] + v.shape[0] and bias is None
    assert torch.equal(qkv, torch.cat(before))
    assert q.data_ptr() == qkv.data_ptr() and v.data_ptr() + v.numel() * v.element_size() == (
        qkv.data_ptr() + qkv.numel() * qkv.element_size())  # the layer's weights are row slices of the fused one
    second = LeanDecoder(adapter.model, 128, form="static")  # a larger buffer later: the same fused storage
    assert second._qkv[0].weight.data_ptr() == qkv.data_ptr() and second._gate_up[0].weight.data_ptr() == (
        first._gate_up[0].weight.data_ptr())


def test_warm_up_does_the_first_use_work_and_changes_no_answer(adapter):
    request = Request(Task.ANSWER, "what color is the cube ?", max_new_tokens=8)
    cold = Pipeline(adapter).answer(frame(4), request)
    warm = Pipeline(adapter)
    answer = warm.warm_up(48, 64)
    assert answer.status == Status.OK and answer.timings.total > 0 and answer.generated_tokens <= 4
    assert warm.engine._lean is not None  # the decode buffers exist before the first real query
    assert warm.answer(frame(4), request).text == cold.text and cold.status == Status.OK


def test_second_query_on_same_frame_reuses_vision_features(adapter):
    engine = TorchEngine(adapter)
    f = frame(3)
    first = engine.generate(adapter.prepare(f, Request(Task.ANSWER, "what color is the cube ?")), 8)
    second_inputs = adapter.prepare(f, Request(Task.ANSWER, "how many objects ?"))
    second = engine.generate(second_inputs, 8)
    assert not first.vision_cached and second.vision_cached and second.vision_encode_s == 0.0
    assert second.token_ids == reference_tokens(adapter, second_inputs, 8)  # cached features give the same answer
    other = engine.generate(adapter.prepare(frame(4, stamp_ns=2), Request(Task.ANSWER, "how many objects ?")), 8)
    assert not other.vision_cached


def test_vision_cache_keeps_each_keyed_image_alive():
    import numpy as np

    from vlm_ros.engine.base import VisionCache
    from vlm_ros.models.base import ModelInputs

    cache = VisionCache(size=2)
    image = np.zeros((4, 4, 3), np.uint8)
    inputs = ModelInputs({}, None, frame_key=("front", 1, id(image)), frame_image=image)
    cache.put(inputs, "features of the first image")
    del image, inputs
    for _ in range(50):  # while the entry exists, no new image can take the first one's id
        other = np.zeros((4, 4, 3), np.uint8)
        probe = ModelInputs({}, None, frame_key=("front", 1, id(other)), frame_image=other)
        assert cache.get(probe) is None
    assert cache.get(probe) is None and len(cache._entries) == 1


def test_streaming_callback_sees_growing_text(adapter):
    engine = TorchEngine(adapter)
    inputs = adapter.prepare(frame(0), Request(Task.ANSWER, "where is the red ball ?"))
    full = engine.generate(inputs, 30)
    assert len(full.text.split()) >= 4
    seen: list[tuple[str, int]] = []
    streamed = engine.generate(inputs, 30, on_text=lambda text, n: seen.append((text, n)))
    assert streamed.text == full.text and seen[-1] == (full.text, len(full.token_ids))
    assert [n for _, n in seen] == list(range(1, len(seen) + 1))
    assert all(seen[i + 1][0].startswith(seen[i][0].rstrip()) for i in range(len(seen) - 1))


def test_token_budget_deadline_and_cancel(adapter):
    engine = TorchEngine(adapter)
    inputs = adapter.prepare(frame(0), Request(Task.ANSWER, "where is the red ball ?"))
    assert engine.generate(inputs, 3).stop_reason == StopReason.LENGTH
    assert len(engine.generate(inputs, 3).token_ids) == 3

    slow_steps = []

    def slow(text, n):  # each token takes 20 ms: a 50 ms deadline stops after a few tokens
        slow_steps.append(n)
        time.sleep(0.02)

    result = engine.generate(inputs, 200, deadline=time.monotonic() + 0.05, on_text=slow)
    assert result.stop_reason == StopReason.DEADLINE and 1 <= len(result.token_ids) < 10

    cancel = threading.Event()
    result = engine.generate(inputs, 200, cancel=cancel, on_text=lambda t, n: n == 2 and cancel.set())
    assert result.stop_reason == StopReason.CANCELLED and len(result.token_ids) == 2


def test_pipeline_answers_with_timings_and_timeout_status(adapter):
    pipeline = Pipeline(adapter)
    answer = pipeline.answer(frame(0), Request(Task.ANSWER, "where is the red ball ?", max_new_tokens=5))
    assert answer.status == Status.OK and answer.generated_tokens == 5 and answer.text
    assert answer.timings.prefill > 0 and answer.timings.preprocess > 0 and answer.timings.total > 0

    def slow(text, n):
        time.sleep(0.02)

    late = pipeline.answer(frame(1), Request(Task.ANSWER, "where is the red ball ?", max_new_tokens=200),
                           deadline=time.monotonic() + 0.05, on_text=slow)
    assert late.status == Status.TIMEOUT and "partial" in late.message and 0 < late.generated_tokens < 200
    expired = pipeline.answer(frame(1), Request(Task.ANSWER, "x"), deadline=time.monotonic() - 1)
    assert expired.status == Status.TIMEOUT and expired.generated_tokens == 0


def test_pipeline_turns_a_model_exception_into_model_error_and_recovers(adapter):
    pipeline = Pipeline(adapter)
    layer = adapter.model.model.language_model.layers[0]

    def explode(module, args):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    handle = layer.register_forward_pre_hook(explode)
    try:
        failed = pipeline.answer(frame(0), Request(Task.ANSWER, "where is the red ball ?", max_new_tokens=4))
    finally:
        handle.remove()
    assert failed.status == Status.MODEL_ERROR and "illegal memory access" in failed.message
    ok = pipeline.answer(frame(0), Request(Task.ANSWER, "where is the red ball ?", max_new_tokens=4))
    assert ok.status == Status.OK and ok.generated_tokens == 4


def test_pipeline_reports_out_of_memory_as_model_error(adapter):
    pipeline = Pipeline(adapter)

    def oom(module, args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    handle = adapter.model.model.language_model.layers[0].register_forward_pre_hook(oom)
    try:
        failed = pipeline.answer(frame(0), Request(Task.ANSWER, "hi", max_new_tokens=4))
    finally:
        handle.remove()
    assert failed.status == Status.MODEL_ERROR and "out of GPU memory" in failed.message
