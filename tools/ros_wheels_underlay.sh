#!/bin/sh
# Makes a venv holding the ROS 2 Kilted wheels from PyPI usable as a CMake underlay (the wheels put an
# ament install space into the venv itself): the message wheels' exported CMake targets name the
# include folders of the machine that built them (/opt/python/cp311-cp311/...); point them at this
# venv's Python and numpy. Running it again changes nothing.
# usage: sh tools/ros_wheels_underlay.sh VENV
set -eu
if [ $# -ne 1 ]; then echo "usage: $0 VENV" >&2; exit 2; fi
VENV=$(cd "$1" && pwd)
PY="$VENV/bin/python"
PYINC=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
NPINC=$("$PY" -c "import numpy; print(numpy.get_include())")
grep -rl "/opt/python/cp311-cp311" "$VENV"/share/*/cmake/ 2>/dev/null | xargs -r sed -i \
  -e "s#/opt/python/cp311-cp311/include/python3.11#$PYINC#g" \
  -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$NPINC#g"
