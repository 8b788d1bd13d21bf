# Where scripts/setup.sh puts the venv and the colcon workspace (sourced by the other scripts).
# Both live outside the source tree: CMake refuses exported include paths inside the package's source dir,
# and the venv's numpy headers would be one. Override the base with VLM_ROS_HOME.
VLM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VLM_HOME="${VLM_ROS_HOME:-$HOME/.cache/vlm_ros}"
VLM_VENV="$VLM_HOME/venv"
VLM_WS="$VLM_HOME/ws/$(basename "$VLM_ROOT")-$(printf '%s' "$VLM_ROOT" | sha256sum | cut -c1-8)"
VLM_INSTALL="$VLM_WS/install/vlm_ros"
