#!/usr/bin/env bash
# Builds, on a CPU machine, everything a GPU machine needs to check the CUDA
# path when it has a driver and the CUDA 13 libraries but no Rust toolchain, no
# network and no package manager (docs/device-path.md, "Checking a GPU
# machine"). Writes target/gpu-bundle/ (at most 56 MiB):
#
#   gpu_check.xz     the `gpu_check` example built with `--features cuda`,
#                    stripped and xz-compressed: probe, parity, make-model, bench
#   cases.tar.xz     the golden cases in compact form (inputs, u8 output frames,
#                    masks, the smaller intermediates, tolerances.txt), and the
#                    Wan decoder case tests/golden/wan-v1.1 as it is
#   run.sh           the checks, in order, each with its own time limit
#   BUNDLE.txt       what was built from which commit, for which GPUs, and the
#                    libraries the binary needs at run time
#
# Then, on the GPU machine: copy target/gpu-bundle/ there and run
# `bash gpu-bundle/run.sh` (results under $OUT when it is set).
#
#   scripts/gpu-bundle.sh [--cpu] [CASE...]    (default case: sparse-v1.1)
#
# --cpu writes target/gpu-bundle-cpu/ from the CPU build instead, with no CUDA
# toolkit: the same run.sh then runs on a CPU machine with
# FLASHVSR_GPU_CHECK_DEVICE=cpu (scripts/gpu-bundle-smoke.sh), which checks the
# script itself where no GPU is.
#
# Needs the CUDA toolkit (scripts/install-deps.sh --cuda) and ../shared/golden.
# CUDA_COMPUTE_CAP picks the GPUs (scripts/cuda-env.sh): 90 (the default) for
# the H100/H200, 80 for the A100. The CUDA build directory is
# $FLASHVSR_CUDA_TARGET_DIR, else the one .ci/run keeps (outside the clone).
set -euo pipefail
cd "$(dirname "$0")/.."

limit_mib=56
cpu=0
cases=()
for arg in "$@"; do
  case "$arg" in
    --cpu) cpu=1 ;;
    -*) echo "gpu-bundle.sh: unknown option $arg (usage: scripts/gpu-bundle.sh [--cpu] [CASE...])" >&2; exit 2 ;;
    *) cases+=("$arg") ;;
  esac
done
[ ${#cases[@]} -gt 0 ] || cases=(sparse-v1.1)

if [ "$cpu" -eq 0 ]; then
  # shellcheck source=scripts/cuda-env.sh
  . scripts/cuda-env.sh
  cuda_target=$(bash scripts/cuda-target-dir.sh)
  echo "CUDA build directory: $cuda_target"
fi

golden=""
for dir in ../shared/golden shared/golden; do
  [ -d "$dir" ] && { golden="$dir"; break; }
done
if [ -z "$golden" ]; then
  echo "gpu-bundle.sh: no golden cases (looked for ../shared/golden and shared/golden)" >&2
  exit 1
fi

start=$SECONDS
# The compact cases are written by the CPU build: the CUDA one needs the
# driver's libcuda.so.1 to start, which a CPU machine does not have.
cargo build --release --example gpu_check
cpu_bin="target/release/examples/gpu_check"
if [ "$cpu" -eq 1 ]; then
  bin="$cpu_bin"
  bundle=target/gpu-bundle-cpu
else
  CARGO_TARGET_DIR="$cuda_target" cargo build --release --features cuda --example gpu_check
  bin="$cuda_target/release/examples/gpu_check"
  bundle=target/gpu-bundle
fi

needed=$(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')
echo "gpu_check needs: $needed"
if [ "$cpu" -eq 0 ] && [[ " $needed " != *" libcublas.so.13 "* ]]; then
  echo "gpu-bundle.sh: the binary does not link libcublas.so.13 (needs: $needed); build with the CUDA 13 toolkit" >&2
  exit 1
fi
if [[ "$needed" == *".so.11"* || "$needed" == *".so.12"* ]]; then
  echo "gpu-bundle.sh: the binary links CUDA 11 or 12 libraries ($needed)" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf "$bundle"
mkdir -p "$bundle" "$work/cases"

strip -o "$work/gpu_check" "$bin"
xz -9 -T0 -c "$work/gpu_check" >"$bundle/gpu_check.xz"

for case in "${cases[@]}"; do
  if [ ! -f "$golden/$case/case.json" ]; then
    echo "gpu-bundle.sh: no golden case $golden/$case" >&2
    exit 1
  fi
  "$cpu_bin" compact "$golden/$case" "$work/cases/$case"
done
# the Wan decoder's own case (decoder=wan) is small and lives in the repository
cp -r tests/golden/wan-v1.1 "$work/cases/wan-v1.1"
tar -C "$work" -cf - cases | xz -9 -T0 >"$bundle/cases.tar.xz"
cp scripts/gpu-bundle-run.sh "$bundle/run.sh"
chmod +x "$bundle/run.sh"

toolkit=none
compute="none (CPU build)"
if [ "$cpu" -eq 0 ]; then
  toolkit=$(nvcc --version | tail -n 1)
  compute="$CUDA_COMPUTE_CAP (kernels built for sm_${CUDA_COMPUTE_CAP}$([ "$CUDA_COMPUTE_CAP" -ge 90 ] && echo a))"
fi
cat >"$bundle/BUNDLE.txt" <<EOF
gst-flashvsr GPU bundle
commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo " (with uncommitted changes)")
built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m)
toolkit: $toolkit
compute capability: $compute
cases: ${cases[*]} wan-v1.1 (decoder=wan)
needs: $needed
gpu_check: $(stat -c %s "$work/gpu_check") bytes stripped, $(stat -c %s "$bundle/gpu_check.xz") compressed
EOF

bytes=$(du -sb "$bundle" | cut -f1)
mib=$(( (bytes + 1048575) / 1048576 ))
cat "$bundle/BUNDLE.txt"
echo "bundle: $bundle, $bytes bytes ($mib MiB), built in $((SECONDS - start)) s"
if [ "$bytes" -gt $((limit_mib * 1048576)) ]; then
  echo "gpu-bundle.sh: the bundle is over $limit_mib MiB" >&2
  exit 1
fi
