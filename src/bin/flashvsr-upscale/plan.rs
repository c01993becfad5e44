//! The segment plan of a long file (`plan.json`): which frames each segment
//! owns and which it renders from, and the settings every worker runs with
//! (docs/segments.md).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::probe::Probe;

/// Frames a segment renders before the first it owns, by default: the
/// measured seam (docs/segments.md, "Seams") is at least 40 dB from here on.
pub const DEFAULT_WARMUP: usize = 25;

/// Version of the plan file layout.
const PLAN_FORMAT: u64 = 1;

/// How the frames are split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// This many segments of (nearly) equal length.
    Segments(usize),
    /// Segments of this many frames (the last one shorter).
    Frames(usize),
}

/// Frames `render_from` is a multiple of: the model's chunk stride, so that a
/// segment's chunks after its first cover the frames the whole file's do,
/// with the same noise (`noise_offset`).
pub const RENDER_ALIGN: usize = 8;

/// One segment: it owns frames `[start, end)` and renders from
/// `render_from` (`start` minus at least the warm-up, down to a multiple of
/// [`RENDER_ALIGN`], at least 0); its decoding starts at the keyframe at or
/// before `render_from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub index: usize,
    pub start: usize,
    pub end: usize,
    pub render_from: usize,
}

impl Segment {
    /// The element's `noise-offset` for this segment: its first frame's
    /// latent frame in the whole file.
    pub fn noise_offset(&self) -> u64 {
        (self.render_from / 4) as u64
    }
    pub fn owned(&self) -> usize {
        self.end - self.start
    }
    pub fn rendered(&self) -> usize {
        self.end - self.render_from
    }
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub input: PathBuf,
    /// `--set` properties of the flashvsr element, in order.
    pub settings: Vec<(String, String)>,
    /// The encoder, as a gst-launch description.
    pub encoder: String,
    pub warmup: usize,
    pub probe: Probe,
    pub segments: Vec<Segment>,
}

/// The segments of `frames` frames split by `split` with `warmup` frames of
/// warm-up each. Errors name the value at fault.
pub fn segments(frames: usize, split: Split, warmup: usize) -> Result<Vec<Segment>, String> {
    if frames == 0 {
        return Err("the input has no video frames".into());
    }
    let bounds: Vec<usize> = match split {
        Split::Segments(0) => return Err("--segments must be at least 1".into()),
        Split::Frames(0) => return Err("--segment-frames must be at least 1".into()),
        Split::Segments(n) if n > frames => {
            return Err(format!(
                "--segments {n} is more than the input's {frames} frames"
            ));
        }
        Split::Segments(n) => (0..=n).map(|i| i * frames / n).collect(),
        Split::Frames(f) => (0..frames)
            .step_by(f)
            .chain(std::iter::once(frames))
            .collect(),
    };
    Ok(bounds
        .windows(2)
        .enumerate()
        .map(|(index, w)| Segment {
            index,
            start: w[0],
            end: w[1],
            render_from: w[0].saturating_sub(warmup) / RENDER_ALIGN * RENDER_ALIGN,
        })
        .collect())
}

impl Plan {
    /// Frames rendered for every frame owned: the work the warm-ups add.
    pub fn work_ratio(&self) -> f64 {
        let rendered: usize = self.segments.iter().map(Segment::rendered).sum();
        rendered as f64 / self.probe.frames() as f64
    }

    /// The presentation timestamp (ns) of frame `index`; one past the last
    /// frame is the end of the stream.
    pub fn pts(&self, index: usize) -> u64 {
        self.probe.pts_of(index)
    }

    /// The keyframe (its timestamp) decoding starts from for `segment`.
    pub fn seek_pts(&self, segment: &Segment) -> u64 {
        self.probe
            .keyframe_at_or_before(self.pts(segment.render_from))
    }

    pub fn path(dir: &Path) -> PathBuf {
        dir.join("plan.json")
    }

    pub fn to_json(&self) -> Value {
        json!({
            "format": PLAN_FORMAT,
            "input": self.input.to_string_lossy(),
            "settings": self.settings.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            "encoder": self.encoder,
            "warmup": self.warmup,
            "probe": self.probe.to_json(),
            "segments": self.segments.iter().map(|s| json!({
                "index": s.index,
                "start": s.start,
                "end": s.end,
                "render_from": s.render_from,
            })).collect::<Vec<_>>(),
        })
    }

    pub fn write(&self, dir: &Path) -> Result<(), String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the work folder {}: {e}", dir.display()))?;
        let text = serde_json::to_string_pretty(&self.to_json()).map_err(|e| e.to_string())?;
        crate::records::write_atomically(&Self::path(dir), text.as_bytes())
    }

    pub fn read(dir: &Path) -> Result<Plan, String> {
        let path = Self::path(dir);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "cannot read {} ({e}): make a plan first with 'flashvsr-upscale plan'",
                path.display()
            )
        })?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not valid JSON: {e}", path.display()))?;
        Self::from_json(&value).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn from_json(v: &Value) -> Result<Plan, String> {
        let format = field(v, "format")?.as_u64();
        if format != Some(PLAN_FORMAT) {
            return Err(format!(
                "plan format {format:?}, this program reads {PLAN_FORMAT}"
            ));
        }
        let text = |v: &Value, name: &str| -> Result<String, String> {
            field(v, name)?
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("'{name}' is not a string"))
        };
        let settings = field(v, "settings")?
            .as_array()
            .ok_or("'settings' is not a list")?
            .iter()
            .map(|pair| match pair.as_array().map(Vec::as_slice) {
                Some([Value::String(k), Value::String(v)]) => Ok((k.clone(), v.clone())),
                _ => Err(format!("'settings' entry {pair} is not [name, value]")),
            })
            .collect::<Result<_, String>>()?;
        let segments = field(v, "segments")?
            .as_array()
            .ok_or("'segments' is not a list")?
            .iter()
            .map(|s| {
                Ok(Segment {
                    index: count(s, "index")?,
                    start: count(s, "start")?,
                    end: count(s, "end")?,
                    render_from: count(s, "render_from")?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let plan = Plan {
            input: PathBuf::from(text(v, "input")?),
            settings,
            encoder: text(v, "encoder")?,
            warmup: count(v, "warmup")?,
            probe: Probe::from_json(field(v, "probe")?)?,
            segments,
        };
        plan.check()?;
        Ok(plan)
    }

    /// The segments cover the frames once, in order.
    fn check(&self) -> Result<(), String> {
        let mut next = 0;
        for (i, s) in self.segments.iter().enumerate() {
            if s.index != i || s.start != next || s.end <= s.start || s.render_from > s.start {
                return Err(format!(
                    "segment {i} ({s:?}) does not follow the one before"
                ));
            }
            next = s.end;
        }
        if next != self.probe.frames() {
            return Err(format!(
                "the segments end at frame {next}, the input has {}",
                self.probe.frames()
            ));
        }
        Ok(())
    }
}

fn field<'a>(v: &'a Value, name: &str) -> Result<&'a Value, String> {
    v.get(name).ok_or_else(|| format!("no '{name}'"))
}

pub fn count(v: &Value, name: &str) -> Result<usize, String> {
    field(v, name)?
        .as_u64()
        .map(|n| n as usize)
        .ok_or_else(|| format!("'{name}' is not a whole number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(s: &[Segment]) -> Vec<(usize, usize, usize)> {
        s.iter().map(|s| (s.render_from, s.start, s.end)).collect()
    }

    #[test]
    fn equal_segments_cover_every_frame_once() {
        let s = segments(130, Split::Segments(3), 33).unwrap();
        // the warm-ups start on multiples of 8
        assert_eq!(spans(&s), [(0, 0, 43), (8, 43, 86), (48, 86, 130)]);
        let s = segments(10, Split::Segments(1), 33).unwrap();
        assert_eq!(spans(&s), [(0, 0, 10)]);
        // as many segments as frames: one frame each
        let s = segments(3, Split::Segments(3), 1).unwrap();
        assert_eq!(spans(&s), [(0, 0, 1), (0, 1, 2), (0, 2, 3)]);
    }

    #[test]
    fn fixed_length_segments_end_with_the_rest() {
        let s = segments(100, Split::Frames(40), 25).unwrap();
        assert_eq!(spans(&s), [(0, 0, 40), (8, 40, 80), (48, 80, 100)]);
        assert_eq!(s[2].noise_offset(), 12);
        // a short file is one segment
        let s = segments(12, Split::Frames(40), 25).unwrap();
        assert_eq!(spans(&s), [(0, 0, 12)]);
    }

    #[test]
    fn impossible_splits_name_the_value() {
        assert!(
            segments(5, Split::Segments(6), 0)
                .unwrap_err()
                .contains("--segments 6")
        );
        assert!(
            segments(5, Split::Segments(0), 0)
                .unwrap_err()
                .contains("--segments")
        );
        assert!(
            segments(5, Split::Frames(0), 0)
                .unwrap_err()
                .contains("--segment-frames")
        );
        assert!(
            segments(0, Split::Segments(1), 0)
                .unwrap_err()
                .contains("no video frames")
        );
    }

    fn probe(frames: usize, keyframe_every: usize) -> Probe {
        Probe {
            pts: (0..frames as u64).map(|i| i * 40_000_000).collect(),
            keyframes: (0..frames as u64)
                .step_by(keyframe_every)
                .map(|i| i * 40_000_000)
                .collect(),
            fps: (25, 1),
            width: 32,
            height: 24,
            audio_streams: 1,
            subtitle_streams: 0,
        }
    }

    #[test]
    fn more_segments_than_keyframes_seek_to_the_keyframe_before() {
        let plan = Plan {
            input: "in.mp4".into(),
            settings: vec![("scale".into(), "2".into())],
            encoder: "x264enc".into(),
            warmup: 5,
            probe: probe(60, 20),
            segments: segments(60, Split::Segments(6), 5).unwrap(),
        };
        // three keyframes (0, 20, 40) for six segments rendering from 0, 0,
        // 8, 24, 32 and 40
        let seeks: Vec<u64> = plan
            .segments
            .iter()
            .map(|s| plan.seek_pts(s) / 40_000_000)
            .collect();
        assert_eq!(seeks, [0, 0, 0, 20, 20, 40]);
        assert!((plan.work_ratio() - 106.0 / 60.0).abs() < 1e-9);
        // and the plan survives its file
        let back = Plan::from_json(&plan.to_json()).unwrap();
        assert_eq!(back, plan);
    }

    #[test]
    fn a_plan_whose_segments_do_not_cover_the_input_is_refused() {
        let mut plan = Plan {
            input: "in.mp4".into(),
            settings: vec![],
            encoder: "x264enc".into(),
            warmup: 0,
            probe: probe(10, 5),
            segments: segments(10, Split::Segments(2), 0).unwrap(),
        };
        plan.segments[1].start = 6;
        let err = Plan::from_json(&plan.to_json()).unwrap_err();
        assert!(err.contains("segment 1"), "{err}");
    }
}
