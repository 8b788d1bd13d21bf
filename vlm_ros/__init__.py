"""vlm_ros: a ROS 2 perception node for vision-language models.

Everything except ``vlm_ros.ros`` is ROS-free and importable without rclpy. After a colcon build, the
generated interfaces live beside it as ``vlm_ros.msg``, ``vlm_ros.srv`` and ``vlm_ros.action``.
"""

from pkgutil import extend_path

# The generated interface modules are installed into the build's site-packages under this same package
# name. When this source tree comes first on sys.path (running from a checkout), let the package span every
# `vlm_ros/` directory on the path so that `vlm_ros.srv` etc. are still found.
__path__ = extend_path(__path__, __name__)

__version__ = "0.1.0"
