#!/usr/bin/env bash
# Creates (once) the Python environment that trains the project's models, in .deps/train,
# and runs the command given in it, e.g.
#   scripts/train-env.sh python models/camera_detector/train.py
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${TWINLINK_DEPS:-$root/.deps}/train"
req="$root/models/camera_detector/requirements.txt"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[train-env] installing $req into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
  echo "$want" > "$stamp"
fi
PATH="$venv/bin:$PATH" exec "$@"
