#!/usr/bin/env bash
# Checks the GPU bundle's run.sh where there is no GPU: builds a bundle from the
# CPU build (`scripts/gpu-bundle.sh --cpu`), runs its run.sh with every phase on
# the CPU and a 1-block model at small sizes, and checks that each phase wrote
# its summary line and passed. Also checks that run.sh without a GPU says so in
# one line and exits 2. About a minute on two cores. CI runs it.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/gpu-bundle.sh --cpu
bundle=target/gpu-bundle-cpu
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

fail() {
  echo "gpu-bundle-smoke.sh: $*" >&2
  exit 1
}

# Without a GPU (no nvidia-smi on this PATH): one line, exit 2, at once.
set +e
no_gpu=$(PATH=/usr/bin:/bin OUT="$out/none" bash "$bundle/run.sh" 2>&1)
rc=$?
set -e
[ "$rc" -eq 2 ] || fail "run.sh without a GPU exited $rc, not 2: $no_gpu"
[ "$(printf '%s\n' "$no_gpu" | wc -l)" -eq 1 ] || fail "run.sh without a GPU printed more than one line: $no_gpu"
echo "without a GPU: $no_gpu"

set +e
OUT="$out/cpu" FLASHVSR_GPU_CHECK_DEVICE=cpu FLASHVSR_GPU_CHECK_QUICK=1 bash "$bundle/run.sh"
rc=$?
set -e
summary="$out/cpu/gpu-check-summary.txt"
[ -s "$out/cpu/gpu-check.log" ] || fail "run.sh wrote no log"
[ -f "$summary" ] || fail "run.sh wrote no summary"
echo "---- summary"
cat "$summary"
[ "$rc" -eq 0 ] || fail "run.sh on the CPU exited $rc"
for line in "probe: probe: cpu ok" "parity sparse-v1.1 f32: PASS" "parity sparse-v1.1 bf16: PASS" \
  "make-model 1 blocks: ok" "bench 64x64 -> 256x256 bf16: ok" "bench 96x64 -> 384x256 bf16: ok" \
  "bench 96x64 -> 384x256 bf16 within 60% of whole frames: ok" "total:"; do
  grep -qF "$line" "$summary" || fail "no summary line starting '$line'"
done
grep -q 'steady_fps=' "$summary" || fail "the benchmarks' summary has no steady_fps"
grep -q 'memory budget:' "$summary" || fail "the budgeted benchmark's summary has no memory budget"
echo "gpu-bundle-smoke.sh: run.sh passed every phase on the CPU"
