//! What `plan` needs to know of the input without decoding it: every video
//! frame's presentation timestamp, the keyframes, the rate and size, read from
//! the parsed (not decoded) stream.

use parking_lot::Mutex;
use std::path::Path;
use std::sync::Arc;

use gst::prelude::*;
use serde_json::{Value, json};

use crate::pipeline::{discard, make, run_to_end};

/// The input's video stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// Presentation timestamps (ns) of every frame, in presentation order.
    pub pts: Vec<u64>,
    /// Presentation timestamps (ns) of the keyframes, ascending.
    pub keyframes: Vec<u64>,
    /// The stream's frame rate (0/1 when variable or unknown).
    pub fps: (i32, i32),
    pub width: i32,
    pub height: i32,
    /// Audio streams of the input (the first is kept in the output).
    pub audio_streams: usize,
    /// Subtitle streams of the input.
    pub subtitle_streams: usize,
}

/// What kind of stream `caps` (parsed or decoded) carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Video,
    Audio,
    Subtitle,
    Other,
}

impl StreamKind {
    pub fn of(caps: &gst::CapsRef) -> StreamKind {
        let Some(name) = caps.structure(0).map(|s| s.name().to_string()) else {
            return StreamKind::Other;
        };
        if name.starts_with("video/") || name.starts_with("image/") {
            StreamKind::Video
        } else if name.starts_with("audio/") {
            StreamKind::Audio
        } else if name.starts_with("text/")
            || name.starts_with("subpicture/")
            || name.starts_with("application/x-ssa")
            || name.starts_with("application/x-ass")
            || name.starts_with("application/x-subtitle")
        {
            StreamKind::Subtitle
        } else {
            StreamKind::Other
        }
    }
}

impl Probe {
    pub fn frames(&self) -> usize {
        self.pts.len()
    }

    /// One frame's duration: from the rate, else the last two timestamps.
    pub fn frame_duration(&self) -> u64 {
        match self.fps {
            (n, d) if n > 0 && d > 0 => (1_000_000_000u64 * d as u64).div_ceil(n as u64),
            _ => match self.pts.as_slice() {
                [.., a, b] => b - a,
                _ => 40_000_000,
            },
        }
    }

    /// The timestamp of frame `index`; `frames()` gives the end of the last.
    pub fn pts_of(&self, index: usize) -> u64 {
        match self.pts.get(index) {
            Some(&t) => t,
            None => self.pts.last().map_or(0, |&t| t + self.frame_duration()),
        }
    }

    /// The last keyframe at or before `pts` (the first frame when none is).
    pub fn keyframe_at_or_before(&self, pts: u64) -> u64 {
        self.keyframes
            .iter()
            .copied()
            .filter(|&k| k <= pts)
            .max()
            .unwrap_or_else(|| self.pts.first().copied().unwrap_or(0))
    }

    pub fn to_json(&self) -> Value {
        json!({
            "fps": [self.fps.0, self.fps.1],
            "width": self.width,
            "height": self.height,
            "pts": self.pts,
            "keyframes": self.keyframes,
            "audio_streams": self.audio_streams,
            "subtitle_streams": self.subtitle_streams,
        })
    }

    pub fn from_json(v: &Value) -> Result<Probe, String> {
        let numbers = |name: &str| -> Result<Vec<u64>, String> {
            v.get(name)
                .and_then(Value::as_array)
                .ok_or_else(|| format!("probe: no list '{name}'"))?
                .iter()
                .map(|n| {
                    n.as_u64()
                        .ok_or_else(|| format!("probe: '{name}' holds {n}"))
                })
                .collect()
        };
        let int = |name: &str| -> Result<i32, String> {
            v.get(name)
                .and_then(Value::as_i64)
                .map(|n| n as i32)
                .ok_or_else(|| format!("probe: no number '{name}'"))
        };
        let fps = numbers("fps")?;
        let [n, d] = fps.as_slice() else {
            return Err("probe: 'fps' is not [numerator, denominator]".into());
        };
        let pts = numbers("pts")?;
        if pts.windows(2).any(|w| w[0] >= w[1]) {
            return Err("probe: the frame timestamps are not increasing".into());
        }
        Ok(Probe {
            pts,
            keyframes: numbers("keyframes")?,
            fps: (*n as i32, *d as i32),
            width: int("width")?,
            height: int("height")?,
            audio_streams: int("audio_streams")? as usize,
            subtitle_streams: int("subtitle_streams")? as usize,
        })
    }
}

/// Reads `input`'s first video stream: `filesrc ! parsebin`, every frame's
/// timestamp and keyframe flag taken from the parsed buffers.
pub fn probe(input: &Path) -> Result<Probe, String> {
    crate::pipeline::check_input(input)?;
    let pipeline = gst::Pipeline::new();
    let src = make("filesrc")?;
    src.set_property("location", input.to_string_lossy().as_ref());
    let parse = make("parsebin")?;
    pipeline
        .add_many([&src, &parse])
        .map_err(|e| e.to_string())?;
    src.link(&parse).map_err(|e| e.to_string())?;

    #[derive(Default)]
    struct Seen {
        linked_video: bool,
        audio: usize,
        subtitles: usize,
        frames: Vec<(u64, bool)>,
        caps: Option<gst::Caps>,
        missing_pts: usize,
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let pipeline_weak = pipeline.downgrade();
    let seen_pads = seen.clone();
    parse.connect_pad_added(move |_, pad| {
        let Some(pipeline) = pipeline_weak.upgrade() else {
            return;
        };
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let kind = StreamKind::of(&caps);
        let is_video = kind == StreamKind::Video;
        let mut state = seen_pads.lock();
        match kind {
            StreamKind::Audio => state.audio += 1,
            StreamKind::Subtitle => state.subtitles += 1,
            _ => {}
        }
        if is_video && !state.linked_video {
            state.linked_video = true;
            state.caps = Some(caps);
            let frames = seen_pads.clone();
            // on the pad itself, before it is linked: no frame passes unseen
            pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                if let Some(buffer) = info.buffer() {
                    let mut seen = frames.lock();
                    match buffer.pts() {
                        Some(pts) => {
                            let key = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
                            seen.frames.push((pts.nseconds(), key));
                        }
                        None => seen.missing_pts += 1,
                    }
                }
                gst::PadProbeReturn::Ok
            });
        }
        drop(state);
        // one demuxer thread feeds every sink: `discard`'s sinks do not wait
        // for preroll
        if let Err(e) = discard(&pipeline, pad) {
            gst::element_error!(pipeline, gst::CoreError::Negotiation, ("{}", e));
        }
    });
    let result = run_to_end(&pipeline, None);
    let _ = pipeline.set_state(gst::State::Null);
    result.map_err(|e| format!("reading {}: {e}", input.display()))?;

    let seen = std::mem::take(&mut *seen.lock());
    if !seen.linked_video {
        return Err(format!("{} has no video stream", input.display()));
    }
    if seen.missing_pts > 0 {
        return Err(format!(
            "{}: {} video frames have no timestamp, so frames cannot be told apart by time",
            input.display(),
            seen.missing_pts
        ));
    }
    let structure = seen.caps.as_ref().and_then(|c| c.structure(0));
    let size = |name: &str| structure.and_then(|s| s.get::<i32>(name).ok()).unwrap_or(0);
    let fps = structure
        .and_then(|s| s.get::<gst::Fraction>("framerate").ok())
        .map_or((0, 1), |f| (f.numer(), f.denom()));
    let mut pts: Vec<u64> = seen.frames.iter().map(|&(t, _)| t).collect();
    pts.sort_unstable();
    pts.dedup();
    if pts.len() != seen.frames.len() {
        return Err(format!(
            "{}: {} video frames share a timestamp with another",
            input.display(),
            seen.frames.len() - pts.len()
        ));
    }
    let mut keyframes: Vec<u64> = seen
        .frames
        .iter()
        .filter(|&&(_, key)| key)
        .map(|&(t, _)| t)
        .collect();
    keyframes.sort_unstable();
    Ok(Probe {
        pts,
        keyframes,
        fps,
        width: size("width"),
        height: size("height"),
        audio_streams: seen.audio,
        subtitle_streams: seen.subtitles,
    })
}
