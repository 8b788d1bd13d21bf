"""Start the vlm_ros perception node (a lifecycle node that brings itself to active).

    ros2 launch vlm_ros perception.launch.py
    ros2 launch vlm_ros perception.launch.py model:=/models/Florence-2-base namespace:=robot1 \
        image_topic:=/camera/color/image_raw camera_info_topic:=/camera/color/camera_info
    ros2 launch vlm_ros perception.launch.py use_sim_time:=true compressed_topic:=/camera/image_raw/compressed

Every default lives in config/perception.yaml; this file only wires arguments to the node. The model and
camera-topic arguments override the parameters file only when given (empty = keep the file's value);
`use_sim_time` (default false) is always passed.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

# Launch arguments that set a parameter when not empty (launch argument -> parameter); the topics are those of
# the default camera, "front".
OVERRIDES = {
    "model": "model",
    **{topic: f"cameras.front.{topic}" for topic in
       ("image_topic", "compressed_topic", "camera_info_topic", "depth_topic", "depth_info_topic")},
}


def _node(context):
    overrides = {param: value for arg, param in OVERRIDES.items()
                 if (value := LaunchConfiguration(arg).perform(context))}
    overrides["use_sim_time"] = LaunchConfiguration("use_sim_time").perform(context) == "true"
    return [LifecycleNode(
        package="vlm_ros",
        executable="perception_node",
        name="vlm",
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file"), overrides],
        output="screen",
    )]


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("vlm_ros"), "config", "perception.yaml")
    args = [
        DeclareLaunchArgument("params_file", default_value=default_params, description="node parameters (YAML)"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of the node, its topics and its query service/action"),
        DeclareLaunchArgument("use_sim_time", default_value="false", choices=["true", "false"],
                              description="take time from /clock (replaying a bag with its clock)"),
        DeclareLaunchArgument("model", default_value="",
                              description="local model directory or id; empty = the params file's `model`"),
        *[DeclareLaunchArgument(arg, default_value="", description=f"{param}; empty = the params file's")
          for arg, param in OVERRIDES.items() if arg != "model"],
    ]
    return LaunchDescription([*args, OpaqueFunction(function=_node)])
