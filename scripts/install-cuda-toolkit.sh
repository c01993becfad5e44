#!/usr/bin/env bash
# Installs the CUDA 13.0 toolkit that `cargo build --features cuda` needs, from
# NVIDIA's own Python packages (nvcc, the runtime, NVRTC, cuBLAS, cuRAND, CCCL),
# into a prefix of its own. It installs no driver library and touches no APT
# source: Debian's `nvidia-cuda-toolkit` depends on Debian's `libcuda1`, which
# repoints `libcuda.so.1` away from a driver installed by NVIDIA's installer or a
# container runtime, so it is never used here.
#
#   scripts/install-cuda-toolkit.sh          (called by scripts/install-deps.sh --cuda)
#
# A toolkit already on the machine is used instead, and nothing is installed:
# `nvcc` on PATH, or `$CUDA_ROOT/bin/nvcc`; unless FLASHVSR_CUDA_PREFIX is set,
# which asks for this toolkit in that prefix whatever else is there (CI does).
#
# The prefix is $FLASHVSR_CUDA_PREFIX, else /opt/gst-flashvsr/cuda-13.0 when that
# can be written, else ~/.local/opt/gst-flashvsr/cuda-13.0. It holds:
#   venv/          the Python packages (about 1.2 GB)
#   root/          a toolkit tree cudarc and candle-kernels' build understand:
#                  bin, include, nvvm (links into the packages), lib64 (the
#                  libraries under their link-time names)
#   root/lib64/stubs/libcuda.so
#                  a link-time stand-in for the driver's libcuda.so.1: every
#                  driver API function returns CUDA_ERROR_STUB_LIBRARY (34). It
#                  is only ever on the linker's search path (cudarc searches
#                  lib64/stubs), never on a run-time one: binaries record the
#                  soname libcuda.so.1 and load the driver's own at run time.
#   env.sh         `. env.sh` puts nvcc on PATH and sets CUDA_ROOT/CUDA_HOME
#
# scripts/cuda-env.sh finds whichever toolkit applies and is what the build
# scripts source.
set -euo pipefail

# The CUDA 13.0 releases of each package (13.0 is what the driver of the GPU
# machines we test on supports, and what cudarc 0.19.10 knows).
packages=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.1.0.3
  nvidia-curand==10.4.0.35
  nvidia-cuda-cccl==13.0.85
)

if [ -z "${FLASHVSR_CUDA_PREFIX:-}" ] && command -v nvcc >/dev/null 2>&1; then
  echo "CUDA toolkit: using nvcc on PATH ($(command -v nvcc)): $(nvcc --version | tail -n 1)"
  exit 0
fi
if [ -z "${FLASHVSR_CUDA_PREFIX:-}" ] && [ -n "${CUDA_ROOT:-}" ] && [ -x "$CUDA_ROOT/bin/nvcc" ]; then
  echo "CUDA toolkit: using CUDA_ROOT=$CUDA_ROOT: $("$CUDA_ROOT/bin/nvcc" --version | tail -n 1)"
  exit 0
fi

default_prefix() {
  local system=/opt/gst-flashvsr/cuda-13.0
  if mkdir -p "$system" 2>/dev/null && [ -w "$system" ]; then
    echo "$system"
  else
    echo "$HOME/.local/opt/gst-flashvsr/cuda-13.0"
  fi
}
prefix="${FLASHVSR_CUDA_PREFIX:-$(default_prefix)}"
mkdir -p "$prefix"
prefix=$(cd "$prefix" && pwd)
stamp="$prefix/.installed"
want="${packages[*]}"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$prefix/root/bin/nvcc" ]; then
  echo "CUDA toolkit: $prefix (already installed): $("$prefix/root/bin/nvcc" --version | tail -n 1)"
  exit 0
fi

python=$(command -v python3 || true)
if [ -z "$python" ]; then
  echo "install-cuda-toolkit.sh: python3 is needed to install NVIDIA's CUDA packages (apt-get install python3 python3-venv)" >&2
  exit 1
fi
echo "Installing the CUDA 13.0 toolkit from NVIDIA's Python packages into $prefix"
rm -rf "$prefix/venv" "$prefix/root" "$stamp"
if ! "$python" -m venv "$prefix/venv"; then
  echo "install-cuda-toolkit.sh: '$python -m venv' failed (on Debian: apt-get install python3-venv)" >&2
  exit 1
fi
"$prefix/venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir "${packages[@]}"

cu13=$("$prefix/venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
for dir in bin include lib nvvm; do
  if [ ! -d "$cu13/$dir" ]; then
    echo "install-cuda-toolkit.sh: the packages left no $cu13/$dir" >&2
    exit 1
  fi
done

root="$prefix/root"
mkdir -p "$root/lib64/stubs"
ln -sfn "$cu13/bin" "$root/bin"
ln -sfn "$cu13/include" "$root/include"
ln -sfn "$cu13/nvvm" "$root/nvvm"
# The libraries under their versioned names and the unversioned ones `-lNAME`
# looks for.
for lib in "$cu13"/lib/*.so*; do
  name=$(basename "$lib")
  ln -sfn "$lib" "$root/lib64/$name"
  case "$name" in
    *.so.*) ln -sfn "$name" "$root/lib64/${name%%.so.*}.so" ;;
  esac
done
for lib in "$cu13"/lib/*.a; do
  ln -sfn "$lib" "$root/lib64/$(basename "$lib")"
done

# The link-time stand-in for libcuda.so.1: one function per driver API name the
# header declares, before and after its versioning macros (cuMemAlloc and
# cuMemAlloc_v2), each returning CUDA_ERROR_STUB_LIBRARY. The signatures do not
# matter: nothing ever calls them.
stub_c="$prefix/libcuda-stub.c"
{
  echo "/* Link-time stand-in for the NVIDIA driver's libcuda.so.1 (never loaded at run time). */"
  { echo '#include <cuda.h>' | cc -E -I"$root/include" -; cat "$root/include/cuda.h"; } |
    grep -oE '\bcu[A-Za-z0-9_]+ *\(' | tr -d ' (' | sort -u |
    while read -r name; do echo "int $name(void) { return 34; }"; done
} >"$stub_c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/lib64/stubs/libcuda.so" "$stub_c"

cat >"$prefix/env.sh" <<EOF
# Sourced by scripts/cuda-env.sh: the CUDA 13.0 toolkit installed by
# scripts/install-cuda-toolkit.sh.
export CUDA_ROOT="$root"
export CUDA_HOME="$root"
export PATH="$root/bin:\$PATH"
EOF
echo "$want" >"$stamp"
echo "CUDA toolkit: $prefix: $("$root/bin/nvcc" --version | tail -n 1)"
echo "  link-time libcuda stub (never loaded at run time): $root/lib64/stubs/libcuda.so"
