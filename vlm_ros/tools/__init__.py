"""Command-line and offline tools (engine build and benchmark, bag writing and replay, demo).

`vlm_ros.tools.bags` writes rosbag2 recordings of rendered camera streams and reads any bag; it is ROS-free (the
pure-Python `rosbags` library). `vlm_ros.tools.replay` publishes a bag through rclpy.
"""
