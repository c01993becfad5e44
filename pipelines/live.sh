#!/bin/sh
# A live source through flashvsr to the screen: the pipeline runs with the latency
# flashvsr reports (25 frames plus the time a chunk takes).
#
#   FLASHVSR_MODEL_DIR=/path/to/FlashVSR-v1.1 pipelines/live.sh
#
# Environment: WIDTH, HEIGHT, FPS (source size and rate, default 64x48 at 10/1), SCALE
# (default 4), NUM_BUFFERS (stop after that many frames; default: run until Ctrl-C),
# SINK (default autovideosink, or "fakesink sync=true" when there is no display),
# GST_PLUGIN_PATH (defaults to this repository's target/release).
set -eu

: "${FLASHVSR_MODEL_DIR:?set FLASHVSR_MODEL_DIR to the folder with the FlashVSR weights}"
export FLASHVSR_MODEL_DIR
REPO=$(cd "$(dirname "$0")/.." && pwd)
GST_PLUGIN_PATH=${GST_PLUGIN_PATH:-$REPO/target/release}
export GST_PLUGIN_PATH
if ! gst-inspect-1.0 flashvsr >/dev/null 2>&1; then
    echo "error: the flashvsr element is not in GST_PLUGIN_PATH=$GST_PLUGIN_PATH; run 'cargo build --release' first" >&2
    exit 1
fi

WIDTH=${WIDTH:-64}
HEIGHT=${HEIGHT:-48}
FPS=${FPS:-10/1}
SCALE=${SCALE:-4}
NUM_BUFFERS=${NUM_BUFFERS:--1}
if [ -z "${SINK:-}" ]; then
    if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
        SINK=autovideosink
    else
        echo "no display: showing nothing (fakesink); set SINK to choose a sink" >&2
        SINK="fakesink sync=true"
    fi
fi

# shellcheck disable=SC2086
exec gst-launch-1.0 -e videotestsrc is-live=true pattern=ball num-buffers="$NUM_BUFFERS" \
    ! video/x-raw,width="$WIDTH",height="$HEIGHT",framerate="$FPS" \
    ! flashvsr scale="$SCALE" ! videoconvert ! $SINK
