#!/bin/sh
# Upscales the video of IN and writes OUT (MP4, H.264), keeping the audio track
# (re-encoded to AAC) and the subtitles: a short form of
# target/release/flashvsr-upscale, which does the work (docs/segments.md).
#
#   FLASHVSR_MODEL_DIR=/path/to/FlashVSR-v1.1 pipelines/upscale-file.sh IN OUT.mp4 [SCALE]
#
# Environment: FLASHVSR_MODEL_DIR (required: the weights folder), FLASHVSR_OPTS (more
# flashvsr properties, e.g. "model-version=v1 color-fix=wavelet"), ENCODER (the
# encoder as a gst-launch description; default flashvsr-upscale's x264 at
# quantizer 18).
set -eu

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    echo "usage: $0 IN OUT.mp4 [SCALE]   (SCALE 2, 3 or 4; default 4)" >&2
    exit 2
fi
: "${FLASHVSR_MODEL_DIR:?set FLASHVSR_MODEL_DIR to the folder with the FlashVSR weights}"
REPO=$(cd "$(dirname "$0")/.." && pwd)
BIN=$REPO/target/release/flashvsr-upscale
if [ ! -x "$BIN" ]; then
    echo "error: $BIN is missing; run 'cargo build --release' first" >&2
    exit 1
fi
set -- "$1" "$2" --set "scale=${3:-4}" --set "model-dir=$FLASHVSR_MODEL_DIR"
for opt in ${FLASHVSR_OPTS:-}; do
    set -- "$@" --set "$opt"
done
if [ -n "${ENCODER:-}" ]; then
    set -- "$@" --encoder "$ENCODER"
fi
exec "$BIN" "$@"
