#!/usr/bin/env bash
# The Wan2.1 VAE decoder (decoder=wan) side by side, in one run: the official module in
# PyTorch eager on the CPU (scripts/bench/wan_decoder_peer.py) against this project's
# `decoder_bench` on the same random released-width weights and the same latents.
# Run from the project root:  scripts/compare-wan-decoder.sh [OUT_SIZE] [CHUNKS]
# (defaults: 512x512 output, 3 chunks: the first and 2 steady ones, f32).
# Prints each side's per-chunk times, the TCDecoder's for scale, the last chunk's
# difference from the peer, then `wan_decoder_speed_ratio=<peer steady chunk / ours>`:
# above 1.0 means this project is faster. Needs ../shared/peer (the official code) and
# the peer venv that ../shared/peer/compare.sh installs (torch) under ~/.cache/flashvsr-peer.
set -euo pipefail
size=${1:-512}; chunks=${2:-3}
root=$(pwd)
official=$root/../shared/peer/official
py=${FLASHVSR_PEER_HOME:-$HOME/.cache/flashvsr-peer}/venv/bin/python
[ -x "$py" ] || { echo "no peer venv at $py: run ../shared/peer/compare.sh once to make it"; exit 1; }
[ -d "$official" ] || { echo "no official code at $official"; exit 1; }
cache=${XDG_CACHE_HOME:-$HOME/.cache}/gst-flashvsr
model=$cache/model-wan-b1
work=$cache/wan-decoder-compare
cargo build --release --quiet --example make_model --example decoder_bench
if [ ! -f "$model/Wan2.1_VAE.pth" ]; then
  target/release/examples/make_model --out "$model" --blocks 1 --wan-vae >/dev/null
fi
grep -m1 'model name' /proc/cpuinfo || true
"$py" scripts/bench/wan_decoder_peer.py "$official" "$model/Wan2.1_VAE.pth" "$work" \
  --width "$size" --height "$size" --chunks "$chunks" | tee "$work.peer.log"
target/release/examples/decoder_bench --model-dir "$model" --size "${size}x${size}" \
  --chunks "$chunks" --decoder both --latents "$work/latents.safetensors" \
  --expect "$work/last_chunk.safetensors" | tee "$work.ours.log"
peer=$(awk '$1 == "peer" && $3 > 0 {s += $7; n++} END {if (n) printf "%.3f", s / n}' "$work.peer.log")
ours=$(awk -F'steady_mean_s=' '/decoder=wan steady_mean_s=/ {print $2}' "$work.ours.log")
[ -n "$peer" ] && [ -n "$ours" ] || { echo "no figures (peer='$peer' ours='$ours')"; exit 1; }
echo "peer_wan_steady_chunk_s=$peer"
echo "ours_wan_steady_chunk_s=$ours"
awk -v p="$peer" -v o="$ours" 'BEGIN {printf "wan_decoder_speed_ratio=%.3f\n", p / o}'
