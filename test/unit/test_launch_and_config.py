"""config/perception.yaml and the node's parameter table agree; the launch file wires what it promises."""

from __future__ import annotations

import ast
import importlib.util

import pytest
import yaml
from conftest import REPO, requires_ros


def yaml_params() -> dict:
    return yaml.safe_load((REPO / "config" / "perception.yaml").read_text())["/**/vlm"]["ros__parameters"]


@requires_ros
def test_every_yaml_default_equals_the_node_default_and_every_parameter_is_in_the_yaml():
    from vlm_ros.ros.parameters import NODE_PARAMS, camera_specs

    specs = {s.name: s for s in NODE_PARAMS}
    for camera in yaml_params()["cameras"]:
        specs.update({s.name: s for s in camera_specs(camera)})
    assert yaml_params() == {name: spec.default for name, spec in specs.items()}


@requires_ros
def test_every_parameter_has_a_description_and_bad_values_are_refused_with_a_reason():
    from vlm_ros.ros.parameters import NODE_PARAMS

    for spec in NODE_PARAMS:
        assert spec.description, spec.name
        assert spec.check(spec.default) == "", spec.name
    by_name = {s.name: s for s in NODE_PARAMS}
    assert "one of" in by_name["backend"].check("cuda-magic")
    assert by_name["device"].check("cuda:1") == ""
    assert "[1, 64]" in by_name["queue_size"].check(0)
    assert by_name["queue_size"].descriptor().integer_range[0].to_value == 64


@requires_ros
def test_the_backend_settings_are_node_parameters_with_the_settings_defaults():
    from vlm_ros.backends import BackendSettings
    from vlm_ros.ros.parameters import NODE_PARAMS

    node = {s.name: s.default for s in NODE_PARAMS}
    defaults = BackendSettings.defaults()
    assert defaults["cpu_threads"] == 1 and defaults["remote.family"] == "embedded"
    assert {name: node[name] for name in defaults} == defaults  # the table takes them from the settings
    assert all(type(node[name]) is type(value) for name, value in defaults.items())  # rclpy types them by default
    values = {**node, "backend": "onnxruntime", "cpu_threads": 3, "engine_image_height": 240, "remote.retries": 5}
    settings = BackendSettings.from_params(values.__getitem__)
    assert (settings.backend, settings.cpu_threads, settings.image_size) == ("onnxruntime", 3, (240, 640))
    assert settings.remote.retries == 5 and settings.remote.base_url == node["remote.base_url"]


LAUNCH_AVAILABLE = all(importlib.util.find_spec(m) for m in ("launch", "launch_ros"))


@pytest.mark.skipif(not LAUNCH_AVAILABLE, reason="launch/launch_ros are not installed here (no PyPI wheels); "
                    "the launch file is checked by hand with upstream sources, see README")
def test_launch_file_declares_arguments_and_one_lifecycle_node():
    from launch.launch_description_sources import get_launch_description_from_python_launch_file

    description = get_launch_description_from_python_launch_file(str(REPO / "launch" / "perception.launch.py"))
    names = {a.name for a in description.get_launch_arguments()}
    assert {"params_file", "namespace", "use_sim_time", "model", "image_topic", "compressed_topic",
            "camera_info_topic", "depth_topic", "depth_info_topic"} <= names
    node, parameters = launch_node()
    assert node.node_executable == "perception_node"
    assert parameters["use_sim_time"] is False
    assert {k: v for k, v in parameters.items() if k != "use_sim_time"} == yaml_params()


def launch_node(**launch_args: str):
    """(the launch file's one node, {parameter: value} as launch_ros hands them to it) for these arguments."""
    from launch import LaunchContext
    from launch.actions import OpaqueFunction
    from launch.launch_description_sources import get_launch_description_from_python_launch_file
    from launch_ros.actions import LifecycleNode

    description = get_launch_description_from_python_launch_file(str(REPO / "launch" / "perception.launch.py"))
    context = LaunchContext()
    context.launch_configurations.update(launch_args)
    for argument in description.get_launch_arguments():
        argument.execute(context)  # the defaults of those not given, and the choices checked
    entities = []
    for entity in description.entities:
        entities += (entity.execute(context) or []) if isinstance(entity, OpaqueFunction) else [entity]
    (node,) = [e for e in entities if isinstance(e, LifecycleNode)]
    node._perform_substitutions(context)  # writes the parameter files the node process would be given
    parameters: dict = {}
    for path, is_file in node._Node__expanded_parameter_arguments:
        assert is_file, path
        for rules in yaml.safe_load(open(path)).values():
            parameters.update(rules["ros__parameters"])
    return node, parameters


@pytest.mark.skipif(not LAUNCH_AVAILABLE, reason="launch/launch_ros are not installed here")
def test_launch_arguments_set_sim_time_and_only_the_topics_given():
    _, parameters = launch_node(use_sim_time="true", compressed_topic="/camera/image_raw/compressed")
    assert parameters["use_sim_time"] is True
    assert parameters["cameras.front.compressed_topic"] == "/camera/image_raw/compressed"
    assert parameters["cameras.front.image_topic"] == yaml_params()["cameras.front.image_topic"]
    with pytest.raises(Exception, match="use_sim_time"):
        launch_node(use_sim_time="yes")


def test_camera_topic_defaults_live_in_the_parameters_only():
    """The launch file repeats none of the default camera topics (it overrides them only when asked)."""
    tree = ast.parse((REPO / "launch" / "perception.launch.py").read_text())
    docstring = ast.get_docstring(tree, clean=False)
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    topics = {v for k, v in yaml_params().items() if k.startswith("cameras.front.") and v}
    assert topics and not topics & (strings - {docstring})
