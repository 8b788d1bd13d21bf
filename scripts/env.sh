# Source this (bash) after scripts/setup.sh to use the venv and the built package from this shell:
#   source scripts/env.sh
# It also keeps ROS traffic on this machine unless you already chose otherwise.
source "$(dirname "${BASH_SOURCE[0]}")/paths.sh"
for _d in /opt/ros/"${ROS_DISTRO:-none}" /opt/ros/*; do
  if [ -f "$_d/setup.bash" ]; then set +u; source "$_d/setup.bash"; break; fi
done
source "$VLM_VENV/bin/activate"
_vlm_site="$(ls -d "$VLM_INSTALL"/lib/python3*/site-packages 2>/dev/null | head -n 1)"
# install/setup.bash does not add the venv-prefixed paths of the PyPI-wheel build: add them here.
export PYTHONPATH="$_vlm_site${PYTHONPATH:+:$PYTHONPATH}"
export LD_LIBRARY_PATH="$VLM_INSTALL/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export AMENT_PREFIX_PATH="$VLM_INSTALL:$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
unset _vlm_site _d
