"""The package's two faces: the colcon install (interfaces + core under one name) and the ROS-free wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import REPO, requires_ros


@requires_ros
def test_install_space_holds_generated_interfaces_and_core_under_one_name(tmp_path):
    # Run outside the checkout with only the build's paths, so the installed copy is what gets imported.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    code = (
        "import vlm_ros, vlm_ros.core.types as t\n"
        "from vlm_ros.srv import Query\n"
        "from vlm_ros.action import Query as QueryAction\n"
        "from vlm_ros.msg import GroundedTarget, GroundedTargetArray, SceneDescription\n"
        "assert Query.Response.MODEL_ERROR == int(t.Status.MODEL_ERROR)\n"
        "print(t.__file__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    core_file = out.stdout.strip()
    assert "site-packages" in core_file and not core_file.startswith(str(REPO / "vlm_ros")), core_file
    installed = Path(core_file).parents[1]  # site-packages/vlm_ros
    assert (installed / "embedded" / "weights" / "model.safetensors").is_file()
    assert not list(installed.rglob("*.log")), "logs (the training log) are not installed"


@requires_ros
def test_demo_finds_its_bag_in_the_install_space_and_else_in_the_checkout(tmp_path):
    code = "from vlm_ros.tools.demo import default_bag; print(default_bag())"
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AMENT_PREFIX_PATH")}
    # installed: only the build's paths, outside the checkout
    installed = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                               env=dict(base, PYTHONPATH=os.environ.get("PYTHONPATH", ""),
                                        AMENT_PREFIX_PATH=os.environ.get("AMENT_PREFIX_PATH", "")))
    assert installed.returncode == 0, installed.stderr
    bag = Path(installed.stdout.strip())
    assert bag.parts[-4:] == ("share", "vlm_ros", "bags", "scenes_small") and not bag.is_relative_to(REPO), bag
    assert (bag / "groundtruth.json").is_file() and (bag / "metadata.yaml").is_file()
    # a checkout that is not installed: its own test/bags
    checkout = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                              env=dict(base, PYTHONPATH=str(REPO)))
    assert checkout.returncode == 0, checkout.stderr
    assert Path(checkout.stdout.strip()) == REPO / "test" / "bags" / "scenes_small"


def read_requirements(name: str) -> list:
    from packaging.requirements import Requirement

    lines = (line.split("#")[0].strip() for line in (REPO / name).read_text().splitlines())
    return [Requirement(line) for line in lines if line and not line.startswith("-")]


def test_runtime_requirements_are_ranges_without_dev_tools_and_ci_pins_them_all():
    from packaging.utils import canonicalize_name

    runtime = {canonicalize_name(r.name): r for r in read_requirements("requirements.txt")}
    assert not [r for r in runtime.values() if any(s.operator in ("==", "===") for s in r.specifier)]
    assert all(runtime[name].specifier and not runtime[name].extras for name in ("torch", "transformers"))
    dev_only = {"pytest", "hypothesis", "ruff", "fastapi", "uvicorn", "openai", "accelerate", "tqdm"}
    assert not dev_only & set(runtime)
    pinned = {canonicalize_name(r.name) for r in read_requirements("constraints.txt")
              if any(s.operator == "==" for s in r.specifier)}
    wanted = set(runtime) | {canonicalize_name(r.name) for r in read_requirements("requirements-dev.txt")}
    assert wanted <= pinned, wanted - pinned


def test_status_codes_match_interface_files():
    """vlm_ros.core.types.Status and the constants of srv/Query.srv and action/Query.action agree."""
    from vlm_ros.core.types import Status

    for rel in ("srv/Query.srv", "action/Query.action"):
        constants = {}
        for line in (REPO / rel).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("uint8 ") and "=" in line:
                name, value = line[len("uint8 "):].split("=")
                constants[name.strip()] = int(value)
        assert constants == {s.name: s.value for s in Status}, rel


def test_ros_free_wheel_builds_and_imports_without_rclpy(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(REPO)],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("vlm_ros-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "vlm_ros/core/types.py" in names and "vlm_ros/embedded/weights/model.safetensors" in names
    assert not any(n.endswith(".log") for n in names), "logs (the training log) are not packaged"
    assert not any(n.startswith(("vlm_ros/srv", "vlm_ros/msg", "vlm_ros/action")) for n in names)
    # Importing the core from the wheel must not need rclpy: block it and import.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import sys; sys.modules['rclpy'] = None\n"
        "import vlm_ros.core.types as t; print(t.__file__)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(site), "PATH": os.environ["PATH"]})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().startswith(str(site))
