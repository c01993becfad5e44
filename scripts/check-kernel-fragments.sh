#!/usr/bin/env bash
# Runs cuda/emulate_fragments.py, the f64 emulation of the fused attention
# kernel's fragment arithmetic (docs/device-path.md, "The fused kernel"), where
# there is no GPU. numpy (pinned) goes into a venv of its own under the user's
# cache, made once and kept.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${XDG_CACHE_HOME:-$HOME/.cache}/gst-flashvsr/kernel-check-venv"
numpy_version=2.2.6
if ! "$venv/bin/python" -c "import numpy, sys; sys.exit(numpy.__version__ != '$numpy_version')" 2>/dev/null; then
  python=$(command -v python3 || true)
  if [ -z "$python" ]; then
    echo "check-kernel-fragments.sh: python3 is needed (apt-get install python3 python3-venv)" >&2
    exit 1
  fi
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  if ! "$python" -m venv "$venv"; then
    echo "check-kernel-fragments.sh: '$python -m venv' failed (on Debian: apt-get install python3-venv)" >&2
    exit 1
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "numpy==$numpy_version"
fi
"$venv/bin/python" cuda/emulate_fragments.py
