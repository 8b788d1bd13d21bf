"""Python packaging of the ROS-free vlm_ros core: `pip install -e .` works without ROS.

The ROS package (interfaces, node executables, launch and config files) is built by colcon through
CMakeLists.txt; this file is not used by that build.
"""

from setuptools import find_packages, setup

setup(
    name="vlm_ros",
    version="0.1.0",
    description="Vision-language model perception core of the vlm_ros ROS 2 package (ROS-free part)",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["vlm_ros", "vlm_ros.*"]),
    package_data={"vlm_ros.embedded": ["weights/*", "weights/**/*"]},
    install_requires=[
        "numpy",
        "opencv-python-headless",
        "torch",
        "transformers>=5.0",
        "tokenizers",
        "safetensors",
    ],
    extras_require={"test": ["pytest", "hypothesis"], "bags": ["rosbags"],
                    "onnx": ["onnx", "onnxscript", "onnxruntime"]},  # TensorRT: from JetPack or NVIDIA's wheels
    entry_points={"console_scripts": ["vlm-ros-build-engines = vlm_ros.export.build_engines:main"]},
)
