//! Decoding a real clip to RGB frames for the examples that run the engine on
//! one (`seam_check`, `segment_seams`). Included with
//! `#[path = "common/clip.rs"] mod clip;`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use gst::prelude::*;
use gstflashvsr::engine::RgbFrame;

/// The first `count` frames of `clip` as packed RGB at `width x height`.
pub fn decode(
    clip: &Path,
    (width, height): (u32, u32),
    count: usize,
) -> Result<Vec<RgbFrame>, String> {
    gst::init().map_err(|e| e.to_string())?;
    if !clip.is_file() {
        return Err(format!("{}: no such file", clip.display()));
    }
    let description = format!(
        "filesrc location=\"{}\" ! decodebin ! videoconvert ! videoscale ! \
         video/x-raw,format=RGB,width={width},height={height},pixel-aspect-ratio=1/1 ! \
         fakesink name=sink signal-handoffs=true sync=false",
        clip.display()
    );
    let pipeline = gst::parse::launch(&description)
        .map_err(|e| e.to_string())?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline".to_owned())?;
    let frames: Arc<Mutex<Vec<RgbFrame>>> = Arc::default();
    let sink = pipeline
        .by_name("sink")
        .ok_or_else(|| "no sink in the pipeline".to_owned())?;
    let collected = frames.clone();
    let row = width as usize * 3;
    sink.connect("handoff", false, move |values| {
        let buffer = values[1].get::<gst::Buffer>().ok()?;
        let map = buffer.map_readable().ok()?;
        // RGB rows are padded to 4 bytes in GStreamer's default layout
        let stride = row.div_ceil(4) * 4;
        let data = map
            .chunks(stride)
            .take(height as usize)
            .flat_map(|r| r[..row].iter().copied())
            .collect();
        let mut frames = collected.lock().unwrap();
        if frames.len() < count {
            frames.push(RgbFrame {
                width,
                height,
                data,
            });
        }
        None
    });
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| format!("decoding {}: {e}", clip.display()))?;
    let bus = pipeline.bus().ok_or_else(|| "no bus".to_owned())?;
    let mut failure = None;
    while let Some(message) = bus.timed_pop(gst::ClockTime::from_seconds(60)) {
        match message.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                failure = Some(format!("decoding {}: {}", clip.display(), e.error()));
                break;
            }
            _ => {}
        }
        if frames.lock().unwrap().len() >= count {
            break;
        }
    }
    pipeline
        .set_state(gst::State::Null)
        .map_err(|e| e.to_string())?;
    if let Some(failure) = failure {
        return Err(failure);
    }
    let frames = std::mem::take(&mut *frames.lock().unwrap());
    if frames.len() < count {
        return Err(format!(
            "{} has {} frames, {count} asked for",
            clip.display(),
            frames.len()
        ));
    }
    Ok(frames)
}
