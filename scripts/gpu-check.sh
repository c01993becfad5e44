#!/usr/bin/env bash
# Proves the CUDA path on a machine with an NVIDIA GPU, its driver and a Rust
# toolchain: installs the CUDA 13 toolkit (scripts/install-deps.sh --cuda),
# builds the GPU bundle for this GPU (scripts/gpu-bundle.sh) and runs its
# run.sh: parity of the bundled golden case on cuda:0 in f32 and bf16, a
# 30-block model with the released widths, bf16 benchmarks at 1408x768 and
# 1920x1088 and the 1080p plan within 40 % of whole frames. Results go to $OUT
# when it is set, else target/gpu-bundle/results/.
#
# A GPU machine without a toolchain runs the bundle built elsewhere instead
# (docs/device-path.md, "Checking a GPU machine"). Exits 2 at once, installing
# nothing, without a GPU; non-zero on any failure.
#
#   scripts/gpu-check.sh     (CUDA_COMPUTE_CAP: the GPU's own unless set)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-check.sh: no NVIDIA GPU with a working driver here (nvidia-smi -L failed), so there is nothing to check" >&2
  exit 2
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "gpu-check.sh: cargo is not on PATH; install Rust (1.92 or newer) with rustup, or build the bundle elsewhere with scripts/gpu-bundle.sh and run its run.sh here" >&2
  exit 2
fi

bash scripts/install-deps.sh --cuda
if [ -z "${CUDA_COMPUTE_CAP:-}" ]; then
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader -i 0 | head -n 1 | tr -d '.')
  export CUDA_COMPUTE_CAP="${cap:-90}"
fi
bash scripts/gpu-bundle.sh
exec bash target/gpu-bundle/run.sh
