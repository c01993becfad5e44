#!/usr/bin/env bash
# Installs the system packages gst-flashvsr builds, tests and runs with, on
# Debian 12 (bookworm) or a derivative: GStreamer 1.22 development files, the
# command-line tools (gst-discoverer-1.0 included) and the plugin sets the example
# pipelines use. Needs a Rust
# toolchain (rustup, 1.92 or newer) already on PATH.
#
# With --cuda it also installs the CUDA 13.0 toolkit that
# `cargo build --features cuda` needs (nvcc, the runtime, cuBLAS, cuRAND, NVRTC),
# from NVIDIA's Python packages into a prefix of its own
# (scripts/install-cuda-toolkit.sh): no driver library, no APT source changed.
set -euo pipefail

usage="usage: scripts/install-deps.sh [--cuda]"
cuda=0
for arg in "$@"; do
  case "$arg" in
    --cuda) cuda=1 ;;
    -h|--help) echo "$usage"; exit 0 ;;
    *) echo "install-deps.sh: unknown argument '$arg' ($usage)" >&2; exit 2 ;;
  esac
done

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

packages=(
  pkg-config build-essential
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav
  gstreamer1.0-plugins-base-apps
)
# The CUDA toolkit comes as Python packages (a venv needs python3-venv); the GPU
# bundle is compressed with xz.
[ "$cuda" -eq 0 ] || packages+=(python3 python3-venv xz-utils)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "Installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ "$cuda" -eq 1 ]; then
  bash "$(dirname "$0")/install-cuda-toolkit.sh"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust with rustup (https://rustup.rs), then run this again" >&2
  exit 1
fi
