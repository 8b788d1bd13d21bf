#!/usr/bin/env bash
# The main job: set up (idempotent), start the node on the embedded default model, replay the bundled bag,
# ask the sample instructions, print answers and targets, save annotated images.
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
bash "$here/setup.sh"
source "$here/env.sh"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$((1 + $$ % 100))}"
cd "$here/.."
exec python -m vlm_ros.tools.demo "$@"
