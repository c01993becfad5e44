#!/usr/bin/env bash
# Installs the system packages gst-flashvsr builds, tests and runs with, on
# Debian 12 (bookworm) or a derivative: GStreamer 1.22 development files, the
# command-line tools (gst-discoverer-1.0 included) and the plugin sets the example
# pipelines use. Needs a Rust
# toolchain (rustup, 1.92 or newer) already on PATH.
#
# With --cuda it also installs the CUDA toolkit (nvcc, cuBLAS, cuRAND) that
# `cargo build --features cuda` needs: Debian's `nvidia-cuda-toolkit`, which lives
# in the `contrib` and `non-free` components, so those are enabled in the APT
# sources first when they are missing.
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

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "Installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Adds `contrib` and `non-free` to every Debian entry of the APT sources that lacks
# them, in the deb822 format (*.sources, bookworm's default) and the classic
# one-line format (sources.list, *.list). Entries that already name a component
# are left as they are, so running this twice changes nothing the second time.
enable_contrib_non_free() {
  local file tmp
  shopt -s nullglob
  for file in /etc/apt/sources.list.d/*.sources; do
    # Only stanzas whose URIs are a Debian archive; a stanza ends at a blank line.
    tmp=$(mktemp)
    awk '
      function flush(   i, line) {
        for (i = 1; i <= n; i++) {
          line = buf[i]
          if (debian && line ~ /^Components:/) {
            if (!(" " substr(line, 12) " " ~ /[ \t]contrib[ \t]/)) line = line " contrib"
            if (!(" " substr(line, 12) " " ~ /[ \t]non-free[ \t]/)) line = line " non-free"
          }
          print line
        }
        n = 0; debian = 0
      }
      /^[ \t]*$/ { flush(); print; next }
      { buf[++n] = $0; if ($0 ~ /^URIs:.*debian/) debian = 1 }
      END { flush() }
    ' "$file" >"$tmp"
    if ! cmp -s "$file" "$tmp"; then
      echo "Enabling contrib and non-free in $file"
      $sudo cp "$tmp" "$file"
    fi
    rm -f "$tmp"
  done
  for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$file" ] || continue
    tmp=$(mktemp)
    # A one-line entry: deb [options] URI suite component...; only Debian archives.
    awk '
      /^[ \t]*deb(-src)?[ \t]/ && $0 ~ /debian/ {
        line = $0
        if (!(line " " ~ /[ \t]contrib[ \t]/)) line = line " contrib"
        if (!(line " " ~ /[ \t]non-free[ \t]/)) line = line " non-free"
        print line; next
      }
      { print }
    ' "$file" >"$tmp"
    if ! cmp -s "$file" "$tmp"; then
      echo "Enabling contrib and non-free in $file"
      $sudo cp "$tmp" "$file"
    fi
    rm -f "$tmp"
  done
  shopt -u nullglob
  return 0
}

if [ "$cuda" -eq 1 ]; then
  # A toolkit already on PATH (Debian's, or NVIDIA's own) is used as it is.
  if ! command -v nvcc >/dev/null 2>&1; then
    enable_contrib_non_free
    echo "Installing: nvidia-cuda-toolkit"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nvidia-cuda-toolkit
  fi
  if ! command -v nvcc >/dev/null 2>&1; then
    echo "install-deps.sh: nvidia-cuda-toolkit is installed but nvcc is not on PATH" >&2
    exit 1
  fi
  echo "CUDA toolkit: $(nvcc --version | tail -n 1)"
  # Debian 12's toolkit is CUDA 11.8, which compiles for compute capability 8.0 at
  # most (9.0 fails with "Unsupported gpu architecture"); the compute_80 PTX is
  # compiled by the driver for newer GPUs (H100, H200) when it loads.
  echo "Build for an NVIDIA GPU with: CUDA_COMPUTE_CAP=80 cargo build --release --features cuda"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust with rustup (https://rustup.rs), then run this again" >&2
  exit 1
fi
