#!/usr/bin/env bash
# Set up (idempotent), lint, and run the whole test suite: bash scripts/test.sh [pytest args]
# (VLM_ROS_DISTRO=jazzy, or VLM_ROS_DISTRO=none VLM_PYTHON=3.10, tests another leg; see scripts/paths.sh)
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
bash "$here/setup.sh"
source "$here/env.sh"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$((1 + $$ % 100))}"
cd "$here/.."
echo "[test] ruff check (ruff.toml)"
python -m ruff check .
python -m pytest "$@"
