"""Start the vlm_ros perception node (a lifecycle node that brings itself to active).

    ros2 launch vlm_ros perception.launch.py
    ros2 launch vlm_ros perception.launch.py model:=/models/Florence-2-base namespace:=robot1 \
        image_topic:=/camera/color/image_raw camera_info_topic:=/camera/color/camera_info

Every default lives in config/perception.yaml; this file only wires arguments to the node. `model` and
`compressed_topic` override the parameters file only when given (empty = keep the file's value).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

# Topics of the default camera ("front" in config/perception.yaml), remappable from the command line.
CAMERA_TOPICS = {
    "image_topic": "camera/image_raw",
    "camera_info_topic": "camera/camera_info",
    "depth_topic": "camera/depth/image_raw",
    "depth_info_topic": "camera/depth/camera_info",
}
# Launch arguments that set a parameter when not empty (launch argument -> parameter).
OVERRIDES = {"model": "model", "compressed_topic": "cameras.front.compressed_topic"}


def _node(context):
    overrides = {param: value for arg, param in OVERRIDES.items()
                 if (value := LaunchConfiguration(arg).perform(context))}
    return [LifecycleNode(
        package="vlm_ros",
        executable="perception_node",
        name="vlm",
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file"), *([overrides] if overrides else [])],
        remappings=[(topic, LaunchConfiguration(name)) for name, topic in CAMERA_TOPICS.items()],
        output="screen",
    )]


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("vlm_ros"), "config", "perception.yaml")
    args = [
        DeclareLaunchArgument("params_file", default_value=default_params, description="node parameters (YAML)"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of the node, its topics and its query service/action"),
        DeclareLaunchArgument("model", default_value="",
                              description="local model directory or id; empty = the params file's `model`"),
        DeclareLaunchArgument("compressed_topic", default_value="",
                              description="sensor_msgs/CompressedImage topic of the default camera; "
                                          "empty = the params file's (none by default)"),
        *[DeclareLaunchArgument(name, default_value=topic, description=f"remap of '{topic}'")
          for name, topic in CAMERA_TOPICS.items()],
    ]
    return LaunchDescription([*args, OpaqueFunction(function=_node)])
