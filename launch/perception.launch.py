"""Start the vlm_ros perception node (a lifecycle node that brings itself to active).

    ros2 launch vlm_ros perception.launch.py
    ros2 launch vlm_ros perception.launch.py model:=/models/Florence-2-base namespace:=robot1 \
        image_topic:=/camera/color/image_raw camera_info_topic:=/camera/color/camera_info

Every default lives in config/perception.yaml; this file only wires arguments to the node.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

# Topics of the default camera ("front" in config/perception.yaml), remappable from the command line.
CAMERA_TOPICS = {
    "image_topic": "camera/image_raw",
    "compressed_topic": "camera/image_raw/compressed",
    "camera_info_topic": "camera/camera_info",
    "depth_topic": "camera/depth/image_raw",
    "depth_info_topic": "camera/depth/camera_info",
}


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("vlm_ros"), "config", "perception.yaml")
    args = [
        DeclareLaunchArgument("params_file", default_value=default_params, description="node parameters (YAML)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("model", default_value="",
                              description="local model directory or id; empty = the embedded default model"),
        *[DeclareLaunchArgument(name, default_value=topic, description=f"remap of '{topic}'")
          for name, topic in CAMERA_TOPICS.items()],
    ]
    node = LifecycleNode(
        package="vlm_ros",
        executable="perception_node",
        name="vlm",
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file"), {"model": LaunchConfiguration("model")}],
        remappings=[(topic, LaunchConfiguration(name)) for name, topic in CAMERA_TOPICS.items()],
        output="screen",
    )
    return LaunchDescription([*args, node])
