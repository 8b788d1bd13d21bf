"""The ROS 2 side of vlm_ros: message conversion and the node. The only part that imports rclpy."""
