# Sourced (`. scripts/cuda-env.sh`) by the scripts that build with
# `--features cuda`: finds the CUDA toolkit and exports what cudarc's and
# candle-kernels' build scripts read.
#
# In order: the toolkit scripts/install-cuda-toolkit.sh installed in
# $FLASHVSR_CUDA_PREFIX when that is set; `nvcc` already on PATH (with CUDA_ROOT
# as given, or the folder above nvcc's bin/); `$CUDA_ROOT/bin/nvcc`; the toolkit
# scripts/install-cuda-toolkit.sh installed in /opt/gst-flashvsr/cuda-13.0 or
# ~/.local/opt/gst-flashvsr/cuda-13.0. Returns non-zero with a message when
# none is found.
#
# CUDA_COMPUTE_CAP defaults to 90: the kernels are built as sm_90a PTX for Hopper
# (H100, H200). Set CUDA_COMPUTE_CAP=80 for Ampere (A100, and the PTX then also
# loads on newer GPUs, compiled by the driver), 86 or 89 for the A10/RTX 30 and
# L4/L40/RTX 40 generations.

flashvsr_cuda_env() {
  local nvcc="" prefix
  if [ -n "${FLASHVSR_CUDA_PREFIX:-}" ]; then
    if [ ! -f "$FLASHVSR_CUDA_PREFIX/env.sh" ]; then
      echo "cuda-env.sh: no toolkit in FLASHVSR_CUDA_PREFIX=$FLASHVSR_CUDA_PREFIX; run scripts/install-deps.sh --cuda" >&2
      return 1
    fi
    # shellcheck disable=SC1091
    . "$FLASHVSR_CUDA_PREFIX/env.sh"
    nvcc="$CUDA_ROOT/bin/nvcc"
  elif command -v nvcc >/dev/null 2>&1; then
    nvcc=$(command -v nvcc)
    if [ -z "${CUDA_ROOT:-}" ]; then
      CUDA_ROOT=$(cd "$(dirname "$(readlink -f "$nvcc")")/.." && pwd)
      export CUDA_ROOT
    fi
  elif [ -n "${CUDA_ROOT:-}" ] && [ -x "$CUDA_ROOT/bin/nvcc" ]; then
    export PATH="$CUDA_ROOT/bin:$PATH"
    nvcc="$CUDA_ROOT/bin/nvcc"
  else
    for prefix in /opt/gst-flashvsr/cuda-13.0 "$HOME/.local/opt/gst-flashvsr/cuda-13.0"; do
      if [ -f "$prefix/env.sh" ]; then
        # shellcheck disable=SC1091
        . "$prefix/env.sh"
        nvcc="$CUDA_ROOT/bin/nvcc"
        break
      fi
    done
  fi
  if [ -z "$nvcc" ] || [ ! -x "$nvcc" ]; then
    echo "cuda-env.sh: no CUDA toolkit found (no nvcc on PATH, no \$CUDA_ROOT/bin/nvcc, nothing installed by scripts/install-deps.sh --cuda); run scripts/install-deps.sh --cuda" >&2
    return 1
  fi
  export CUDA_HOME="${CUDA_HOME:-$CUDA_ROOT}"
  export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
  echo "CUDA toolkit: $nvcc ($("$nvcc" --version | tail -n 1)), CUDA_ROOT=$CUDA_ROOT, CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP"
}

flashvsr_cuda_env
