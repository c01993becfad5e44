#!/usr/bin/env bash
# Makes a golden case like tiny-v1 but with the TCDecoder at the released widths
# [512, 256, 128, 128] (the official modules through ../shared/peer/gen_golden.py,
# seeded random weights, the carphone clip), then checks this crate against it with
# `parity` in f32 and in bf16. The released widths decide which of the decoder's
# layers may take bf16 products on the CPU (docs/architecture.md, "bf16 products
# on the CPU"); the fixtures' own decoders are too narrow to show it, and at 230 MB
# this case is made on demand rather than kept in the repository.
#
# Usage, from the project root: scripts/golden/wide-decoder-case.sh [OUT_ROOT]
# (default ~/.cache/gst-flashvsr/golden; about 3 minutes on 2 cores). Needs the
# peer's venv (../shared/peer/compare.sh makes it) and the GStreamer tools.
set -euo pipefail

shared=${SHARED:-../shared}
out_root=${1:-$HOME/.cache/gst-flashvsr/golden}
py=$HOME/.cache/flashvsr-peer/venv/bin/python
case_name=tcwide-v1
[ -x "$py" ] || { echo "no peer venv at $py: run $shared/peer/compare.sh once" >&2; exit 1; }
[ -d "$shared/peer" ] || { echo "no $shared/peer: the peer's code is needed" >&2; exit 1; }

if [ ! -f "$out_root/$case_name/io.safetensors" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  cp -r "$shared/peer/." "$work/"
  mkdir -p "$work/raw" "$out_root"
  gst-launch-1.0 -q filesrc location="$shared/media/carphone_pristine.mp4" ! decodebin \
    ! videoconvert ! video/x-raw,format=RGB ! filesink location="$work/raw/carphone_pristine.rgb"
  # tiny-v1's DiT, LQ projection, geometry and frames; released decoder widths
  "$py" - "$work/cases.json" "$case_name" <<'EOF'
import json, sys
path, name = sys.argv[1:3]
cases = json.load(open(path))
case = json.loads(json.dumps(cases["tiny-v1"]))
case["weight_seed"] = 7
case["model"]["tc_channels"] = [512, 256, 128, 128]
cases[name] = case
json.dump(cases, open(path, "w"), indent=1)
EOF
  (cd "$work" && "$py" gen_golden.py official "$out_root" "$case_name" raw)
fi

cargo build --release --example parity
status=0
for precision in f32 bf16; do
  echo "== $case_name, precision $precision"
  ./target/release/examples/parity "$out_root/$case_name" --precision "$precision" \
    > "$out_root/$case_name-$precision.log" || status=1
  grep -E "tolerances|decoded|frames_u8|PASS|FAIL" "$out_root/$case_name-$precision.log"
done
exit $status
