"""The engine cache (manifests, keys, reuse / rebuild / refuse), TensorRT shape profiles and precision checks,
and the TensorRT engine itself where TensorRT and CUDA exist (skipped elsewhere, with the reason)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import pytest

from vlm_ros.engine import names
from vlm_ros.engine.graph_engine import GraphShapes
from vlm_ros.export import manifest as cache
from vlm_ros.export.tensorrt_build import (
    engine_key,
    has_qdq,
    precision_problem,
    shape_profiles,
)

KEY = {"model_sha256": "abc", "family": "llava", "export_version": 1, "opset": 17}
SHAPES = GraphShapes(pixel_shape=(1, 3, 32, 32), image_tokens=16, embed_dim=32, layers=2, kv_heads=2, head_dim=16,
                     vocab=100, image_token_id=4)


class Builds:
    """A fake build: writes one file, counts calls, optionally fails."""

    def __init__(self, fail: bool = False):
        self.calls, self.fail = 0, fail

    def __call__(self, tmp):
        self.calls += 1
        (tmp / "graph.onnx").write_text(f"build {self.calls}")
        if self.fail:
            raise RuntimeError("parser error")
        return {"files": ["graph.onnx"]}


def test_model_hash_follows_content_and_ignores_logs(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    first = cache.model_hash(tmp_path)
    (tmp_path / "train.log").write_text("step 1")
    assert cache.model_hash(tmp_path) == first
    (tmp_path / "model.safetensors").write_bytes(b"weightz")
    assert cache.model_hash(tmp_path) != first


def test_missing_is_built_then_reused_and_the_manifest_holds_the_key(tmp_path):
    folder, build, logs = tmp_path / "m-llava-onnx", Builds(), []
    cache.ensure(folder, "onnx", KEY, "reuse", build, logs.append)
    cache.ensure(folder, "onnx", KEY, "reuse", build, logs.append)
    assert build.calls == 1 and logs[-1].startswith("reusing")
    stored = json.loads((folder / names.MANIFEST_FILE).read_text())
    assert stored["kind"] == "onnx" and stored["key"] == KEY and "built_at" in stored["info"]
    assert cache.check(folder, "onnx", KEY).status == "match"


@pytest.mark.parametrize("policy,builds,error", [("reuse", 1, "stale"), ("rebuild", 2, None), ("refuse", 1, "stale")])
def test_a_stale_folder_is_rebuilt_or_refused_per_policy_naming_what_changed(tmp_path, policy, builds, error):
    folder, build, logs = tmp_path / "m-llava-onnx", Builds(), []
    cache.ensure(folder, "onnx", KEY, "rebuild", build, logs.append)
    changed = {**KEY, "model_sha256": "def"}
    assert cache.check(folder, "onnx", changed).differences == ["model_sha256: 'abc' -> 'def'"]
    if error:
        with pytest.raises(cache.EngineCacheError, match="stale.*model_sha256"):
            cache.ensure(folder, "onnx", changed, policy, build, logs.append)
        assert (folder / "graph.onnx").read_text() == "build 1"  # the old files are left alone
    else:
        cache.ensure(folder, "onnx", changed, policy, build, logs.append)
        assert "stale" in logs[-2] and (folder / "graph.onnx").read_text() == "build 2"
        assert cache.check(folder, "onnx", changed).status == "match"
    assert build.calls == builds


def test_refuse_builds_nothing_and_a_failed_build_leaves_no_folder(tmp_path):
    with pytest.raises(cache.EngineCacheError, match="build_engines"):
        cache.ensure(tmp_path / "a", "onnx", KEY, "refuse", Builds(), print)
    with pytest.raises(RuntimeError, match="parser error"):
        cache.ensure(tmp_path / "b", "onnx", KEY, "rebuild", Builds(fail=True), print)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no half-built folder, no temporary left
    with pytest.raises(ValueError, match="engine_policy"):
        cache.ensure(tmp_path / "c", "onnx", KEY, "sometimes", Builds(), print)


def test_a_folder_without_manifest_or_with_another_kind_does_not_match(tmp_path):
    folder = tmp_path / "x"
    folder.mkdir()
    assert cache.check(folder, "onnx", KEY).status == "missing"
    (folder / names.MANIFEST_FILE).write_text("{not json")
    assert cache.check(folder, "onnx", KEY).status == "missing"
    cache.Manifest("onnx", KEY).write(folder)
    assert cache.check(folder, "tensorrt", KEY).status == "stale"


def test_engines_dir_parameter(tmp_path, monkeypatch):
    assert cache.engines_dir(str(tmp_path)) == tmp_path
    with pytest.raises(ValueError, match="absolute"):
        cache.engines_dir("engines")
    monkeypatch.setattr(cache, "_REPO_ENGINES", tmp_path / "absent")
    monkeypatch.setenv("VLM_ROS_HOME", str(tmp_path / "home"))
    assert cache.engines_dir("") == tmp_path / "home" / "engines"
    assert cache.folder_name("/m/My Model", "llava", "trt-fp16") == "My_Model-llava-trt-fp16"


def test_shape_profiles_cover_the_dynamic_axes():
    profiles = shape_profiles(SHAPES, max_tokens=256)
    assert profiles["vision"][names.PIXEL_VALUES] == ((1, 3, 32, 32),) * 3
    assert profiles["prefill"][names.INPUT_IDS] == ((1, 17), (1, 48), (1, 256))
    assert profiles["prefill"][names.IMAGE_FEATURES] == ((16, 32),) * 3
    past = profiles["decode"][names.past_key(1)]
    assert past == ((1, 2, 1, 16), (1, 2, 48, 16), (1, 2, 255, 16))
    assert set(profiles["decode"]) == {names.INPUT_IDS, *names.past_names(2)}
    with pytest.raises(ValueError, match="image tokens"):
        shape_profiles(SHAPES, max_tokens=17)


def test_shape_profiles_cover_every_graph_input_of_a_multimodal_rope_model():
    shapes = dataclasses.replace(SHAPES, pixel_shape=(64, 1176), image_grid=(1, 8, 8), mrope=True,
                                 image_size=(112, 112))
    profiles = shape_profiles(shapes, max_tokens=256)
    assert profiles["vision"][names.PIXEL_VALUES] == ((64, 1176),) * 3
    assert profiles["prefill"][names.POSITION_IDS] == ((3, 17), (3, 48), (3, 256))  # follows the prompt length
    assert profiles["decode"][names.ROPE_DELTA] == ((1,),) * 3
    assert list(profiles["prefill"]) == names.prefill_inputs(True)
    assert list(profiles["decode"]) == names.decode_inputs(2, True)
    assert list(shape_profiles(SHAPES, 256)["decode"]) == names.decode_inputs(2, False)
    assert GraphShapes.from_dict(json.loads(json.dumps(shapes.to_dict()))) == shapes  # as the manifest stores it


def test_shape_profiles_cover_the_instruction_inputs_of_instructblips_vision_graph():
    shapes = dataclasses.replace(SHAPES, qformer_text_max=64)
    profiles = shape_profiles(shapes, max_tokens=256)
    assert list(profiles["vision"]) == names.vision_inputs(True)
    for name in (names.QFORMER_INPUT_IDS, names.QFORMER_ATTENTION_MASK):
        assert profiles["vision"][name] == ((1, 1), (1, 32), (1, 64))
    assert list(shape_profiles(SHAPES, 256)["vision"]) == names.vision_inputs(False)
    assert GraphShapes.from_dict(json.loads(json.dumps(shapes.to_dict()))) == shapes


def test_shape_profiles_cover_the_cross_attention_state_of_an_encoder_decoder():
    shapes = dataclasses.replace(SHAPES, encoder_decoder=True)
    profiles = shape_profiles(shapes, max_tokens=256)
    assert list(profiles["decode"]) == names.decode_inputs(2, False, True)
    for name in names.cross_names(2):  # the encoder output's K / V: as long as the prompt
        assert profiles["decode"][name] == ((1, 2, 17, 16), (1, 2, 48, 16), (1, 2, 256, 16))
    assert profiles["decode"][names.past_key(0)] == ((1, 2, 1, 16), (1, 2, 32, 16), (1, 2, 255, 16))
    assert list(profiles["prefill"]) == names.prefill_inputs(False)
    assert GraphShapes.from_dict(json.loads(json.dumps(shapes.to_dict()))) == shapes


def test_precision_checks():
    assert precision_problem("fp16", (8, 7), False) == ""
    assert "compute capability 8.9" in precision_problem("fp8", (8, 7), True)
    assert "QuantizeLinear" in precision_problem("int8", (8, 7), False)
    assert precision_problem("int8", (8, 7), True) == ""
    assert "one of" in precision_problem("int4", (9, 0), True)


def test_qdq_detection(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    def save(op, inputs, path):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT if op == "Relu" else TensorProto.INT8, [2])
        inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])] if op != "Relu" else []
        graph = helper.make_graph([helper.make_node(op, inputs, ["y"])], "g", [x], [y], inits)
        onnx.save(helper.make_model(graph), str(path))
        return path

    assert not has_qdq(save("Relu", ["x"], tmp_path / "float.onnx"))
    assert has_qdq(save("QuantizeLinear", ["x", "s"], tmp_path / "q.onnx"))


def test_engine_key_holds_every_field_an_engine_depends_on():
    plat = {"tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": [8, 7], "arch": "aarch64",
            "jetpack": "R36 (release), REVISION: 3.0"}
    key = engine_key(KEY, plat, "fp16", shape_profiles(SHAPES, 256), dla_core=-1)
    assert {"model_sha256", "export_version", "tensorrt", "gpu", "compute_capability", "jetpack", "precision",
            "profile", "dla_core"} <= set(key)
    assert key["profile"]["prefill"][names.INPUT_IDS] == [[1, 17], [1, 48], [1, 256]]
    json.dumps(key)  # storable as is


TRT_READY = importlib.util.find_spec("tensorrt") is not None and importlib.util.find_spec("torch") is not None
if TRT_READY:
    import torch

    TRT_READY = torch.cuda.is_available()


@pytest.mark.skipif(not TRT_READY, reason="TensorRT is not installable on these machines (no tensorrt module, no "
                    "libnvinfer, and no CUDA device in CI); the TensorRT path is written against the TensorRT 10 API "
                    "and its ONNX inputs are verified with onnxruntime")
def test_tensorrt_engines_give_the_onnxruntime_tokens(tmp_path):
    from model_checks import frame

    from vlm_ros.core.types import Request, Task
    from vlm_ros.engine.onnx_engine import OnnxEngine
    from vlm_ros.engine.tensorrt_engine import TensorRTEngine
    from vlm_ros.export.tensorrt_build import ensure_engines
    from vlm_ros.models.llava import LlavaAdapter
    from vlm_ros.testing.tiny import build_tiny_llava

    model_dir = build_tiny_llava(tmp_path / "tiny")
    adapter = LlavaAdapter.from_pretrained(model_dir)
    logs: list[str] = []
    directory, shapes, key = ensure_engines(adapter, model_dir, tmp_path / "engines", "rebuild", logs.append,
                                            precision="fp32", max_tokens=128)
    assert key["gpu"] and (directory / names.ENGINE_FILES["decode"]).is_file()
    onnx_dir = tmp_path / "engines" / cache.folder_name(model_dir, "llava", "onnx")
    inputs = adapter.prepare(frame(0), Request(Task.ANSWER, "where is the red ball ?"))
    want = OnnxEngine(adapter, onnx_dir, shapes).generate(inputs, 20, ignore_eos=True)
    got = TensorRTEngine(adapter, directory, shapes).generate(inputs, 20, ignore_eos=True)
    assert got.token_ids == want.token_ids
    ensure_engines(adapter, model_dir, tmp_path / "engines", "refuse", logs.append, precision="fp32", max_tokens=128)
    assert logs[-1].startswith("reusing tensorrt cache")
