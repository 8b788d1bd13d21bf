"""Python packaging of the ROS-free vlm_ros core: `pip install -e .` works without ROS.

The ROS package (interfaces, node executables, launch and config files) is built by colcon through
CMakeLists.txt; this file is not used by that build.
"""

from pathlib import Path

from setuptools import find_packages, setup


def requirements(name: str) -> list[str]:
    """The requirement lines of a requirements file beside this one (no comments, no -r includes)."""
    lines = (line.split("#")[0].strip() for line in (Path(__file__).parent / name).read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-")]


setup(
    name="vlm_ros",
    version="0.1.0",
    description="Vision-language model perception core of the vlm_ros ROS 2 package (ROS-free part)",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["vlm_ros", "vlm_ros.*"]),
    package_data={"vlm_ros.embedded": ["weights/*", "weights/**/*"]},
    install_requires=requirements("requirements.txt"),  # TensorRT: from JetPack or NVIDIA's wheels
    extras_require={"dev": requirements("requirements-dev.txt")},
    entry_points={"console_scripts": ["vlm-ros-build-engines = vlm_ros.export.build_engines:main"]},
)
