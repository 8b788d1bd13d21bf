# Source this (bash) after scripts/setup.sh to use the venv and the built package from this shell, with the same
# VLM_ROS_DISTRO / VLM_PYTHON / VLM_ROS_HOME as setup.sh had:
#   source scripts/env.sh
# It also keeps ROS traffic on this machine unless you already chose otherwise.
source "$(dirname "${BASH_SOURCE[0]}")/paths.sh"
if [ -n "$VLM_SYSTEM_ROS" ]; then set +u; source "$VLM_SYSTEM_ROS/setup.bash"; fi
source "$VLM_VENV/bin/activate"
if [ "$VLM_ROS_DISTRO" = none ]; then
  export PYTHONPATH="$VLM_ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
  _vlm_site="$(ls -d "$VLM_INSTALL"/lib/python3*/site-packages 2>/dev/null | head -n 1)"
  # install/setup.bash does not add the venv-prefixed paths of the PyPI-wheel build: add them here.
  export PYTHONPATH="$_vlm_site${PYTHONPATH:+:$PYTHONPATH}"
  export LD_LIBRARY_PATH="$VLM_INSTALL/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export AMENT_PREFIX_PATH="$VLM_INSTALL:$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
  unset _vlm_site
fi
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
