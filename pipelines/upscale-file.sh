#!/bin/sh
# Upscales the video of IN with flashvsr and writes OUT (MP4, H.264), keeping the
# audio track when IN has one (AAC is passed through, other codecs become AAC).
#
#   FLASHVSR_MODEL_DIR=/path/to/FlashVSR-v1.1 pipelines/upscale-file.sh IN OUT.mp4 [SCALE]
#
# Environment: FLASHVSR_MODEL_DIR (required: the weights folder), FLASHVSR_OPTS (more
# flashvsr properties, e.g. "model-version=v1 color-fix=wavelet"), X264_OPTS (encoder
# settings), GST_PLUGIN_PATH (defaults to this repository's target/release).
set -eu

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    echo "usage: $0 IN OUT.mp4 [SCALE]   (SCALE 2, 3 or 4; default 4)" >&2
    exit 2
fi
IN=$1
OUT=$2
SCALE=${3:-4}
case $SCALE in 2 | 3 | 4) ;; *) echo "error: SCALE must be 2, 3 or 4, got $SCALE" >&2; exit 2 ;; esac
[ -f "$IN" ] || { echo "error: input file $IN does not exist" >&2; exit 1; }
case $IN$OUT in *\"*) echo "error: file names with double quotes are not supported" >&2; exit 2 ;; esac
: "${FLASHVSR_MODEL_DIR:?set FLASHVSR_MODEL_DIR to the folder with the FlashVSR weights}"
export FLASHVSR_MODEL_DIR

REPO=$(cd "$(dirname "$0")/.." && pwd)
GST_PLUGIN_PATH=${GST_PLUGIN_PATH:-$REPO/target/release}
export GST_PLUGIN_PATH
if ! gst-inspect-1.0 flashvsr >/dev/null 2>&1; then
    echo "error: the flashvsr element is not in GST_PLUGIN_PATH=$GST_PLUGIN_PATH; run 'cargo build --release' first" >&2
    exit 1
fi
FLASHVSR_OPTS=${FLASHVSR_OPTS:-}
X264_OPTS=${X264_OPTS:-speed-preset=medium pass=qual quantizer=20}

# The container decides the demuxer; its pads are named video_0 and audio_0.
CONTAINER=$(gst-typefind-1.0 "$IN" | sed -n 's/^.* - \([^,]*\).*$/\1/p')
case $CONTAINER in
    video/quicktime) DEMUX=qtdemux ;;
    video/x-matroska | video/webm) DEMUX=matroskademux ;;
    *) DEMUX= ;;
esac

# The audio track, if any: its caps as gst-discoverer reports them ("" when it has
# none). gst-discoverer bounds its own run time; a pipeline that waits for an
# audio pad would wait forever on a file without one.
AUDIO=
if [ -n "$DEMUX" ]; then
    AUDIO=$(gst-discoverer-1.0 -v "$IN" 2>/dev/null |
        sed -n 's/^ *audio #[0-9]*: \(audio\/[^,]*\(, mpegversion=(int)[0-9]\)\?\).*$/\1/p' | head -n 1)
fi

UPSCALE_CHAIN="flashvsr scale=$SCALE $FLASHVSR_OPTS ! progressreport update-freq=1 ! x264enc $X264_OPTS ! queue"
SINK="mp4mux name=mux ! filesink location=\"$OUT\""

if [ -z "$AUDIO" ]; then
    if [ -z "$DEMUX" ]; then
        echo "note: $CONTAINER input: only MP4/MOV and Matroska inputs keep their audio" >&2
    fi
    echo "upscaling video x$SCALE (no audio track)"
    # shellcheck disable=SC2086
    exec gst-launch-1.0 -e filesrc location="\"$IN\"" ! decodebin ! $UPSCALE_CHAIN ! $SINK
fi

case $AUDIO in
    "audio/mpeg, mpegversion=(int)4") AUDIO_CHAIN="aacparse" ; echo "upscaling video x$SCALE, passing AAC audio through" ;;
    *) AUDIO_CHAIN="decodebin ! audioconvert ! audioresample ! avenc_aac" ; echo "upscaling video x$SCALE, re-encoding $AUDIO audio to AAC" ;;
esac
# The audio queue is unbounded: the muxer takes audio only as fast as the upscaled
# video arrives, and a full audio queue would stall the demuxer (and so the video).
# shellcheck disable=SC2086
exec gst-launch-1.0 -e filesrc location="\"$IN\"" ! $DEMUX name=demux \
    demux.video_0 ! queue ! decodebin ! $UPSCALE_CHAIN ! $SINK \
    demux.audio_0 ! queue max-size-buffers=0 max-size-bytes=0 max-size-time=0 ! $AUDIO_CHAIN ! mux.
