#!/bin/sh
# Generates and compiles the package's messages (msg/, srv/) for a venv made by `make` (the ros-*
# wheels of requirements-ros.txt and requirements-interfaces.txt, plus Debian's cmake and g++), where
# the Python package is installed editable from this tree:
# - the C and C++ libraries and share/vl2spike_ros (message definitions, ament index) go into the venv,
#   the underlay the ros-* wheels make (its lib/ is on LD_LIBRARY_PATH in every venv Python process);
# - the generated Python modules (vl2spike_ros/msg, vl2spike_ros/srv and the type support extension
#   modules) go beside the sources, where the editable package finds them (git ignores them). They are
#   installed first under the venv's lib/vl2spike_ros_interfaces/, off sys.path: a vl2spike_ros/ in
#   site-packages would hide the editable package.
# usage: sh tools/build_interfaces.sh VENV     (one compile job)
set -eu
if [ $# -ne 1 ]; then echo "usage: $0 VENV" >&2; exit 2; fi
VENV=$(cd "$1" && pwd)
REPO=$(cd "$(dirname "$0")/.." && pwd)
BUILD="$REPO/build/interfaces"
LOG="$REPO/build/interfaces.log"
GENERATED_PY=lib/vl2spike_ros_interfaces
sh "$REPO/tools/ros_wheels_underlay.sh" "$VENV"
mkdir -p "$BUILD"
fail() { tail -n 30 "$LOG" >&2; echo "vl2spike_ros interfaces: $1 failed (log: $LOG)" >&2; exit 1; }
CMAKE_PREFIX_PATH="$VENV" AMENT_PREFIX_PATH="$VENV" cmake -S "$REPO" -B "$BUILD" -Wno-dev \
  -DCMAKE_INSTALL_PREFIX="$VENV" -DPYTHON_INSTALL_DIR="$GENERATED_PY" -DPython3_EXECUTABLE="$VENV/bin/python" \
  -DBUILD_TESTING=OFF -DVL2SPIKE_ROS_INTERFACES_ONLY=ON >"$LOG" 2>&1 || fail configure
cmake --build "$BUILD" -j 1 >>"$LOG" 2>&1 || fail build
rm -rf "${VENV:?}/$GENERATED_PY"
cmake --install "$BUILD" >>"$LOG" 2>&1 || fail install
rm -rf "$REPO/vl2spike_ros/msg" "$REPO/vl2spike_ros/srv" "$REPO"/vl2spike_ros/vl2spike_ros_s__*
cp -R "$VENV/$GENERATED_PY/vl2spike_ros/msg" "$VENV/$GENERATED_PY/vl2spike_ros/srv" \
  "$VENV/$GENERATED_PY"/vl2spike_ros/vl2spike_ros_s__*.so "$REPO/vl2spike_ros/"
echo "vl2spike_ros interfaces: built (log: $LOG)"
