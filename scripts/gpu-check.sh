#!/usr/bin/env bash
# Proves the CUDA path on a machine with an NVIDIA GPU and its driver: builds with
# `--features cuda`, checks every golden case under ../shared/golden on cuda:0 in
# f32 and bf16, then benchmarks a model with the released widths and 30 DiT blocks
# (random weights) in bf16 at two sizes, printing the frame rate and the peak
# device memory of each. Sized to finish within 10 minutes on one H200-class GPU
# once the build is done. Exits 2 at once, installing nothing, without a GPU;
# non-zero on any other failure.
#
#   scripts/gpu-check.sh            (CUDA_COMPUTE_CAP, default 80, picks the PTX target)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1 || ! gpus=$(nvidia-smi -L 2>/dev/null) || [ -z "$gpus" ]; then
  echo "gpu-check.sh: no NVIDIA GPU with a working driver here (nvidia-smi -L failed), so there is nothing to check" >&2
  exit 2
fi

start=$SECONDS
# Runs one phase and prints how many seconds it took.
phase() {
  local t=$SECONDS
  echo "== $1"
  shift
  "$@"
  echo "== done in $((SECONDS - t)) s"
}

echo "GPUs:"
echo "$gpus"
# cuda:N counts GPUs in the order nvidia-smi lists them (CUDA's default order is
# fastest first), so that the memory sampled below is the benchmarked GPU's.
export CUDA_DEVICE_ORDER=PCI_BUS_ID

if ! command -v cargo >/dev/null 2>&1; then
  echo "gpu-check.sh: cargo is not on PATH; install Rust (1.92 or newer) with rustup first" >&2
  exit 2
fi

phase "installing the system packages and the CUDA toolkit" bash scripts/install-deps.sh --cuda

export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader -i 0 2>/dev/null || true)
driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader -i 0 2>/dev/null || true)
if [ -n "$cap" ]; then
  echo "GPU 0: compute capability $cap, driver ${driver:-unknown}; kernels built as compute_${CUDA_COMPUTE_CAP} PTX, which the driver compiles for this GPU when it loads them"
else
  echo "GPU 0: compute capability unknown to nvidia-smi; kernels built as compute_${CUDA_COMPUTE_CAP} PTX"
fi

# Debian's toolkit depends on Debian's driver library (libcuda1). Next to a driver
# installed another way, a different libcuda.so.1 may be found first, and CUDA
# then fails to initialise with a version mismatch: say so before it does.
libcuda=$(dpkg-query -W -f='${Version}' libcuda1 2>/dev/null || true)
if [ -n "$libcuda" ] && [ -n "$driver" ] && [[ "$libcuda" != "$driver"* ]]; then
  echo "warning: Debian's libcuda1 $libcuda is installed beside driver $driver; if CUDA cannot be initialised, put the driver's own libcuda.so.1 first (LD_LIBRARY_PATH)" >&2
fi

target="${CARGO_TARGET_DIR:-target}"
phase "building with --features cuda" cargo build --release --features cuda --examples
bin="$target/release/examples"

# The parity check takes --device and --precision since its arguments moved to
# clap; an older checkout would read the flags as the case folder.
parity_help=$("$bin/parity" --help 2>&1 || true)
if [[ "$parity_help" != *--device* ]]; then
  echo "gpu-check.sh: this checkout's parity example has no --device option, so it cannot check a GPU" >&2
  exit 1
fi

golden=""
for dir in ../shared/golden shared/golden; do
  [ -d "$dir" ] && { golden="$dir"; break; }
done
if [ -z "$golden" ]; then
  echo "gpu-check.sh: no golden cases found (looked for ../shared/golden and shared/golden)" >&2
  exit 1
fi

work=$(mktemp -d)
sampler=""
cleanup() {
  if [ -n "$sampler" ]; then kill "$sampler" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

summary=()

# One golden case at one precision; passes only when parity's last line is PASS.
check_case() {
  local case="$1" precision="$2" log="$work/parity.log"
  echo "-- parity $(basename "$case") on cuda:0, $precision"
  timeout 300 "$bin/parity" --device cuda:0 --precision "$precision" "$case" | tee "$log"
  if [ "$(tail -n 1 "$log")" != "PASS" ]; then
    echo "gpu-check.sh: parity failed for $case in $precision on cuda:0" >&2
    exit 1
  fi
  summary+=("parity $(basename "$case") $precision: PASS")
}

cases=0
for case in "$golden"/*/; do
  [ -f "$case/case.json" ] || continue
  cases=$((cases + 1))
  for precision in f32 bf16; do
    phase "parity $(basename "$case") $precision" check_case "${case%/}" "$precision"
  done
done
if [ "$cases" -eq 0 ]; then
  echo "gpu-check.sh: $golden holds no golden case (no */case.json)" >&2
  exit 1
fi

model="$work/model"
phase "writing a 30-block model with the released widths" \
  cargo run --release --features cuda --example make_model -- --out "$model" --blocks 30

used_mib() {
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0
}

# Benchmarks one input size in bf16 on cuda:0 while sampling the GPU's memory
# every 0.2 s; prints bench's fps lines and the peak above the idle baseline.
# 41 frames are the first chunk (25 frames, the warm-up: kernel loading, PTX
# compilation, allocations) and two steady chunks of 8, plus the end-of-stream
# drain; `fps` counts the warm-up, `steady_fps` does not; the efficiency replays are skipped (--no-replays).
bench() {
  local width="$1" height="$2" log="$work/bench.log" mem="$work/memory.log" idle peak
  shift 2
  local extra=("$@")
  idle=$(used_mib)
  (while :; do used_mib; sleep 0.2; done) >"$mem" 2>/dev/null &
  sampler=$!
  timeout 240 "$bin/bench" --model-dir "$model" --width "$width" --height "$height" \
    --frames 41 --scale 4 --precision bf16 --device cuda:0 --no-replays "${extra[@]}" | tee "$log"
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  sampler=""
  peak=$(sort -n "$mem" | tail -n 1)
  peak=${peak:-$idle}
  local fps
  fps=$(grep -E '^[a-z_]*fps=' "$log" | tr '\n' ' ' || true)
  echo "peak device memory: $((peak - idle)) MiB above the idle ${idle} MiB"
  summary+=("bench ${width}x${height} -> $((width * 4))x$((height * 4)) bf16 ${extra[*]}: ${fps}peak_mib=$((peak - idle))")
}

phase "bench 352x192 -> 1408x768 (width x height)" bench 352 192
phase "bench 480x272 -> 1920x1088 (width x height)" bench 480 272
# The same in tiles of 1024: the H200's free memory holds every tile's state, so
# none is parked (docs/element.md, "Memory and tiles").
phase "bench 480x272 -> 1920x1088 in tiles of 1024" bench 480 272 --tile-size 1024
# Within 40 % of the whole-frame estimate (29.6 GiB for the released model in
# bf16: 8.5 GiB for the stream beside the weights): the plan the memory model
# predicts there is 4 tiles of 1024x640 with decoder tiles of 512, their states
# parked in host memory, 10.6 GiB in all (README "Memory and tiles"); this
# measures its peak and what the parking costs in fps.
phase "bench 480x272 -> 1920x1088 within 40 % of whole frames" \
  bench 480 272 --max-memory 9126805504

echo
echo "== summary ($(nvidia-smi --query-gpu=name --format=csv,noheader -i 0), $((SECONDS - start)) s)"
printf '%s\n' "${summary[@]}"
