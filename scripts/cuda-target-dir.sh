#!/usr/bin/env bash
# Prints (and creates) the build directory of `--features cuda` builds: kept
# outside the clone, so that candle's CUDA kernels, about 10-20 minutes of PTX
# on two cores, are compiled once per machine rather than once per clone.
# $FLASHVSR_CUDA_TARGET_DIR, else /var/cache/gst-flashvsr/target-cuda when it
# can be written, else ~/.cache/gst-flashvsr/target-cuda.
set -euo pipefail
dir="${FLASHVSR_CUDA_TARGET_DIR:-/var/cache/gst-flashvsr/target-cuda}"
if ! mkdir -p "$dir" 2>/dev/null || [ ! -w "$dir" ]; then
  dir="${XDG_CACHE_HOME:-$HOME/.cache}/gst-flashvsr/target-cuda"
  mkdir -p "$dir"
fi
echo "$dir"
