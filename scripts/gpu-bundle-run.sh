#!/usr/bin/env bash
# The GPU check of gst-flashvsr, run from its bundle (written by
# scripts/gpu-bundle.sh, which copies this file in as run.sh) on a machine with
# an NVIDIA GPU and its driver, and no toolchain: `bash gpu-bundle/run.sh`.
#
# It finds the CUDA 13 libraries the machine has (the nvidia/* folders of the
# Python packages, /usr/local/cuda), prints the GPU and driver, checks that the
# binary starts and computes on the GPU, then runs these phases, each with its
# own time limit inside the whole run's (FLASHVSR_GPU_CHECK_SECONDS, 470 s):
#
#   1. parity of every bundled golden case on cuda:0, f32 and bf16 (the bounds
#      are printed before each run: devtools::parity::Tolerances);
#   2. a 30-block model with the released widths and random weights, written to
#      local disk;
#   3. bf16 benchmarks, 352x192 -> 1408x768 and 480x272 -> 1920x1088 (fps,
#      steady_fps, stage times, peak device memory), and the 1920x1088 plan
#      within 40 % of what whole frames need (--memory-share 0.4);
#   4. every self-attention path of one steady chunk side by side at 1408x768
#      (gpu_check attention), then the 1408x768 benchmark once per path.
#
# One summary line per phase; everything is logged. With $OUT set, the log and
# the summary are written there (gpu-check.log, gpu-check-summary.txt), else
# beside this script in results/. Exits 2 at once without a GPU, 1 when a phase
# failed, 0 when all passed.
#
# For checking this script where there is no GPU (scripts/gpu-bundle-smoke.sh,
# on a bundle from `scripts/gpu-bundle.sh --cpu`): FLASHVSR_GPU_CHECK_DEVICE=cpu
# runs every phase on the CPU, without looking for a GPU or CUDA libraries, and
# FLASHVSR_GPU_CHECK_QUICK=1 makes the written model 1 block and benchmarks the
# first golden case's small model at 64x64 and 96x64 instead.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
total_limit=${FLASHVSR_GPU_CHECK_SECONDS:-470}
device=${FLASHVSR_GPU_CHECK_DEVICE:-cuda:0}
quick=${FLASHVSR_GPU_CHECK_QUICK:-0}
start=$SECONDS
on_gpu=1
[ "$device" != cpu ] || on_gpu=0

gpus=""
if [ "$on_gpu" -eq 1 ]; then
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! gpus=$(timeout 10 nvidia-smi -L 2>/dev/null) || [ -z "$gpus" ]; then
    echo "run.sh: no NVIDIA GPU with a working driver here (nvidia-smi -L failed): nothing to check"
    exit 2
  fi
fi

results="${OUT:-$here/results}"
mkdir -p "$results"
log="$results/gpu-check.log"
summary="$results/gpu-check-summary.txt"
: >"$log"
: >"$summary"
exec > >(tee -a "$log") 2>&1

work=$(mktemp -d "${TMPDIR:-/tmp}/flashvsr-gpu.XXXXXX")
sampler=""
cleanup() {
  [ -z "$sampler" ] || kill "$sampler" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

failures=0
# Records one summary line (printed and written to the summary file).
record() {
  echo "$1" >>"$summary"
  echo "SUMMARY: $1"
}

# --- the binary and the cases -------------------------------------------
unxz_to() { # FILE.xz DEST
  if command -v xz >/dev/null 2>&1; then
    xz -dc "$1" >"$2"
  else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"
  fi
}
bin="$work/gpu_check"
if ! unxz_to "$here/gpu_check.xz" "$bin"; then
  record "setup: FAIL: could not decompress $here/gpu_check.xz (no xz and no python3?)"
  exit 1
fi
chmod +x "$bin"
if ! python3 -c 'import lzma, sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' \
  "$here/cases.tar.xz" "$work" 2>/dev/null && ! tar -C "$work" -xJf "$here/cases.tar.xz"; then
  record "setup: FAIL: could not unpack $here/cases.tar.xz"
  exit 1
fi

# --- the CUDA libraries ----------------------------------------------------
# Puts the folders of the CUDA libraries the binary needs on LD_LIBRARY_PATH;
# exits when one is missing.
find_cuda_libraries() {
  local py dirs=() added=() lib dir still
  # Folders that may hold the CUDA 13 libraries: the Python packages' (PyTorch's
  # CUDA wheels install nvidia/cu13/lib, older layouts nvidia/<lib>/lib), then a
  # system toolkit.
  local list_package_dirs='
import glob, os, site, sys
roots = set(p for p in sys.path if p.endswith(("site-packages", "dist-packages")))
try:
    roots.update(site.getsitepackages())
    roots.add(site.getusersitepackages())
except Exception:
    pass
for root in sorted(roots):
    for d in sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib"))):
        print(d)
'
  mapfile -t dirs < <(
    for py in python3 /usr/bin/python3 /usr/local/bin/python3; do
      command -v "$py" >/dev/null 2>&1 && "$py" -c "$list_package_dirs" 2>/dev/null
    done
    ls -d /usr/local/cuda/lib64 /usr/local/cuda-13*/lib64 /usr/local/cuda/targets/x86_64-linux/lib 2>/dev/null
  )
  mapfile -t dirs < <(printf '%s\n' "${dirs[@]}" | awk 'NF && !seen[$0]++')
  # libcublasLt is loaded by libcublas, not named by the binary
  for lib in $(missing_libs) libcublasLt.so.13; do
    for dir in "${dirs[@]}"; do
      if [ -e "$dir/$lib" ]; then
        case ":${LD_LIBRARY_PATH:-}:" in
          *":$dir:"*) ;;
          *)
            export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
            added+=("$dir")
            ;;
        esac
        break
      fi
    done
  done
  echo "CUDA library folders added: ${added[*]:-none}"
  still=$(missing_libs | tr '\n' ' ')
  if [ -n "$still" ]; then
    record "setup: FAIL: libraries not found: $still(searched: ${dirs[*]:-no candidate folder})"
    exit 1
  fi
}
missing_libs() { ldd "$bin" 2>/dev/null | awk '/not found/ {print $1}'; }

# --- the GPU ----------------------------------------------------------------------
# Prints the GPU and driver; exits when the bundle's kernels cannot load on it.
check_gpu() {
  export CUDA_DEVICE_ORDER=PCI_BUS_ID
  gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader -i 0 2>/dev/null)
  echo "GPUs:"
  echo "$gpus"
  cat "$here/BUNDLE.txt" 2>/dev/null
  record "gpu: $gpu; $(grep -E '^(commit|toolkit|compute capability):' "$here/BUNDLE.txt" 2>/dev/null | tr '\n' ';' | sed 's/;$//')"
  gpu_cap=$(echo "$gpu" | awk -F', ' '{print $4}' | tr -d '.')
  bundle_cap=$(sed -n 's/^compute capability: \([0-9]*\).*/\1/p' "$here/BUNDLE.txt" 2>/dev/null)
  if [ -n "$gpu_cap" ] && [ -n "$bundle_cap" ]; then
    # sm_90a and newer "a" targets load only on their own generation; plain
    # compute_NN PTX loads on NN and newer.
    if { [ "$bundle_cap" -ge 90 ] && [ "$gpu_cap" != "$bundle_cap" ]; } || [ "$gpu_cap" -lt "$bundle_cap" ]; then
      record "setup: FAIL: the bundle's kernels are for compute capability $bundle_cap, this GPU has $gpu_cap: rebuild with CUDA_COMPUTE_CAP=$gpu_cap scripts/gpu-bundle.sh"
      exit 1
    fi
  fi
}

if [ "$on_gpu" -eq 1 ]; then
  find_cuda_libraries
  check_gpu
else
  record "device: $device (FLASHVSR_GPU_CHECK_DEVICE): no GPU looked for"
fi

used_mib() {
  [ "$on_gpu" -eq 1 ] || { echo 0; return; }
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 2>/dev/null | head -n 1
}

# Runs one phase: phase NAME LIMIT_SECONDS COMMAND...; its output goes to the
# log and to $work/phase.log. Sets phase_rc and phase_seconds; the limit is cut
# to what is left of the whole run.
phase() {
  local name="$1" limit="$2"
  shift 2
  local left=$((total_limit - (SECONDS - start)))
  phase_seconds=0
  # a skipped phase leaves no earlier phase's output to be read as its own
  : >"$work/phase.log"
  if [ "$left" -lt 20 ]; then
    phase_rc=125
    echo "== $name: skipped, the run's $total_limit s are spent"
    return
  fi
  [ "$limit" -le "$left" ] || limit=$left
  echo "== $name (limit $limit s)"
  local t=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$work/phase.log"
  phase_rc=${PIPESTATUS[0]}
  phase_seconds=$((SECONDS - t))
  echo "== $name: exit $phase_rc in $phase_seconds s"
}

# How a phase ended, for its summary line.
outcome() {
  case "$phase_rc" in
    0) echo "ok" ;;
    124 | 137) echo "TIMEOUT after $phase_seconds s" ;;
    125) echo "SKIPPED (out of time)" ;;
    *) echo "FAIL (exit $phase_rc)" ;;
  esac
}

# --- 0. the binary starts and computes on the GPU ----------------------------------
phase "probe" 60 "$bin" probe --device "$device"
if [ "$phase_rc" -ne 0 ]; then
  record "probe: $(outcome): $(tail -n 3 "$work/phase.log" | tr '\n' ' ')"
  exit 1
fi
record "probe: $(grep '^probe:' "$work/phase.log" | tail -n 1)"

# --- 1. parity ---------------------------------------------------------------------
for case in "$work"/cases/*/; do
  case=${case%/}
  for precision in f32 bf16; do
    phase "parity $(basename "$case") $precision" 120 "$bin" parity --device "$device" --precision "$precision" "$case"
    verdict=$(tail -n 1 "$work/phase.log")
    # the largest error of each kind: intermediate tensors, masks, frames
    worst=$(awk '$2 ~ /^max_abs=/ && $1 !~ /mask|kv_windows|frames/ {split($2, a, "="); if (a[2] + 0 > m) {m = a[2] + 0; n = $1}} END {if (n) printf "worst intermediate %s %g", n, m}' "$work/phase.log")
    masks=$(awk '$1 ~ /mask/ {d += $(NF-2)} END {printf "mask entries differing %d", d}' "$work/phase.log")
    frames=$(grep '^out.frames_u8' "$work/phase.log" | sed 's/  */ /g')
    [ "$phase_rc" -eq 0 ] && [ "$verdict" = "PASS" ] || failures=$((failures + 1))
    record "parity $(basename "$case") $precision: $([ "$phase_rc" -eq 0 ] && echo "$verdict" || echo "$(outcome): $verdict") in ${phase_seconds} s; $worst; $masks; $frames"
  done
done

# --- 2. the released-width model ---------------------------------------------------
model="$work/model"
blocks=30
[ "$quick" != 1 ] || blocks=1
phase "$blocks-block model with the released widths" 120 "$bin" make-model --out "$model" --blocks "$blocks"
[ "$phase_rc" -eq 0 ] || failures=$((failures + 1))
record "make-model $blocks blocks: $(outcome) in ${phase_seconds} s; $(grep -E '^  total' "$work/phase.log" | sed 's/  */ /g')"

# One bf16 benchmark on cuda:0 while nvidia-smi samples the GPU's memory every
# 0.2 s: bench NAME LIMIT WIDTH HEIGHT [bench flags...]. 41 frames: chunk 0 (the
# warm-up: module loading, PTX compilation, allocations) and two steady chunks.
bench() {
  local name="$1" limit="$2" width="$3" height="$4"
  shift 4
  if [ ! -f "$bench_model/diffusion_pytorch_model_streaming_dmd.safetensors" ]; then
    record "$name: SKIPPED (no model)"
    return
  fi
  local idle peak
  idle=$(used_mib)
  (while :; do used_mib; sleep 0.2; done) >"$work/memory.log" 2>/dev/null &
  sampler=$!
  phase "$name" "$limit" "$bin" bench --model-dir "$bench_model" --width "$width" --height "$height" \
    --frames "$frames" --scale 4 --precision bf16 --device "$device" --no-replays "$@"
  kill "$sampler" 2>/dev/null
  wait "$sampler" 2>/dev/null
  sampler=""
  peak=$(sort -n "$work/memory.log" | tail -n 1)
  [ "$phase_rc" -eq 0 ] || failures=$((failures + 1))
  local figures stages plan
  figures=$(grep -E '^(fps|steady_fps|device_weights_mib|device_peak_mib|device_stream_peak_mib)=' "$work/phase.log" | tr '\n' ' ')
  plan=$(grep -E '^(tile plan|memory budget):' "$work/phase.log" | tr '\n' ' ')
  # the stage times of the last chunk, as name=ms
  stages=$(awk '/^chunk frames/ {n = split($0, h, " "); next} n && $1 ~ /^[0-9]+$/ {for (i = 3; i <= n; i++) s[i] = $i; have = 1} END {if (have) {printf "last chunk:"; for (i = 3; i <= n; i++) printf " %s=%s", h[i], s[i]}}' "$work/phase.log")
  record "$name: $(outcome) in ${phase_seconds} s; ${figures}nvidia_smi_peak_mib=$((${peak:-0} - ${idle:-0})); $stages; $plan"
}

# --- 3. benchmarks -----------------------------------------------------------------
frames=41
small=(352 192)
large=(480 272)
bench_model="$model"
share=40
if [ "$quick" = 1 ]; then
  frames=33
  # the small model's tiles at these sizes save less than 60 %
  share=60
  bench_model=$(ls -d "$work"/cases/*/model | head -n 1)
  small=(64 64)
  large=(96 64)
fi
bench "bench ${small[0]}x${small[1]} -> $((small[0] * 4))x$((small[1] * 4)) bf16" 120 "${small[@]}"
bench "bench ${large[0]}x${large[1]} -> $((large[0] * 4))x$((large[1] * 4)) bf16" 150 "${large[@]}"
bench "bench ${large[0]}x${large[1]} -> $((large[0] * 4))x$((large[1] * 4)) bf16 within $share% of whole frames" 180 "${large[@]}" --memory-share "0.$share"

# --- 4. attention paths ------------------------------------------------------------
# Every self-attention path of one steady chunk side by side (masked, gathered,
# fused; the mask by bisection and by the selection kernel) at 1408x768 bf16,
# then the small benchmark once per path.
attention_size=(1408 768)
[ "$quick" != 1 ] || attention_size=(256 256)
attention_precision=bf16
[ "$on_gpu" -eq 1 ] || attention_precision=f32
phase "attention paths ${attention_size[0]}x${attention_size[1]} $attention_precision" 90 "$bin" attention \
  --device "$device" --precision "$attention_precision" --width "${attention_size[0]}" --height "${attention_size[1]}"
[ "$phase_rc" -eq 0 ] || failures=$((failures + 1))
record "attention ${attention_size[0]}x${attention_size[1]} $attention_precision: $(outcome) in ${phase_seconds} s; $(grep -E '^[a-z_]+(_ms|_max_abs_error|_entries_differing|_over_[a-z]+)=|^(FAIL|[a-z]+: FAIL)' "$work/phase.log" | tr '\n' ' ')"
paths=(masked gathered fused)
[ "$on_gpu" -eq 1 ] || paths=(masked gathered)
for path in "${paths[@]}"; do
  bench "bench ${small[0]}x${small[1]} -> $((small[0] * 4))x$((small[1] * 4)) bf16 attention=$path" 90 "${small[@]}" --attention "$path"
done

record "total: $((SECONDS - start)) s, $failures phase(s) failed"
[ "$failures" -eq 0 ]
