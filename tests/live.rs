//! `flashvsr` behind a live source that is faster than the model: with
//! `late-policy=bicubic` every frame comes out and the stream keeps to the
//! latency the element reports (late frames are their bicubic upscale, one QoS
//! message each); with `wait` every frame is the model's. RGB in and out, so that
//! each output can be compared with the bicubic upscale of its input. A model of
//! the tiny fixture's sizes (`common::tiny_model`) at 32x24 -> 128x96 takes
//! about 1 s per 8-frame chunk on a 2-core machine: three times real time at 25
//! fps.

mod common;
use common::{init, tiny_model};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;
use gstflashvsr::pixels::bicubic::resize_rgb;

const WIDTH: usize = 32;
const HEIGHT: usize = 24;
const SCALE: usize = 4;

/// Frame data by PTS, and in output order.
type Frames = HashMap<gst::ClockTime, Vec<u8>>;
type Outputs = Vec<(gst::ClockTime, Vec<u8>)>;

/// What a live run produced: inputs and outputs by PTS, the PTS of every frame
/// flashvsr posted a QoS message for, the wall time to EOS and the latency the
/// pipeline reports at EOS.
struct LiveRun {
    inputs: Frames,
    outputs: Outputs,
    degraded: Vec<gst::ClockTime>,
    wall: Duration,
    latency: gst::ClockTime,
}

/// The runs measure lateness against the real clock: one at a time (cargo runs a
/// binary's tests in parallel).
static CPU: Mutex<()> = Mutex::new(());

fn run_live(model: &std::path::Path, policy: &str, frames: u32) -> LiveRun {
    let _cpu = CPU.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc is-live=true num-buffers={frames} pattern=ball \
         ! video/x-raw,format=RGB,width={WIDTH},height={HEIGHT},framerate=25/1 \
         ! flashvsr name=vsr model-version=v1 late-policy={policy} model-dir=\"{}\" \
         ! fakesink name=sink sync=true qos=true",
        model.display()
    ))
    .unwrap();
    let bin = pipeline.downcast_ref::<gst::Bin>().unwrap();
    let vsr = bin.by_name("vsr").unwrap();
    let inputs: Arc<Mutex<Frames>> = Arc::default();
    let outputs: Arc<Mutex<Outputs>> = Arc::default();
    let probe = |pad: &str, store: Box<dyn Fn(gst::ClockTime, Vec<u8>) + Send + Sync>| {
        vsr.static_pad(pad)
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                if let Some(gst::PadProbeData::Buffer(b)) = &info.data {
                    let map = b.map_readable().unwrap();
                    store(b.pts().unwrap(), map.as_slice().to_vec());
                }
                gst::PadProbeReturn::Ok
            });
    };
    let sink = inputs.clone();
    probe(
        "sink",
        Box::new(move |pts, data| {
            sink.lock().unwrap().insert(pts, data);
        }),
    );
    let sink = outputs.clone();
    probe(
        "src",
        Box::new(move |pts, data| sink.lock().unwrap().push((pts, data))),
    );

    let started = Instant::now();
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let mut degraded = Vec::new();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no EOS within two minutes"
        );
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(100)) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => panic!("{} ({:?})", e.error(), e.debug()),
            gst::MessageView::Qos(q) if msg.src() == Some(vsr.upcast_ref()) => {
                let (_, _, _, timestamp, _) = q.get();
                degraded.push(timestamp.expect("a QoS message names its frame"));
            }
            gst::MessageView::Latency(_) => {
                let _ = pipeline
                    .downcast_ref::<gst::Bin>()
                    .unwrap()
                    .recalculate_latency();
            }
            _ => {}
        }
    }
    let wall = started.elapsed();
    let mut query = gst::query::Latency::new();
    assert!(pipeline.query(&mut query), "latency query at EOS");
    let (_, latency, _) = query.result();
    pipeline.set_state(gst::State::Null).unwrap();
    let inputs = std::mem::take(&mut *inputs.lock().unwrap());
    let outputs = std::mem::take(&mut *outputs.lock().unwrap());
    LiveRun {
        inputs,
        outputs,
        degraded,
        wall,
        latency,
    }
}

/// Whether `output` is exactly the bicubic upscale of `input` (both packed RGB).
fn is_bicubic(input: &[u8], output: &[u8]) -> bool {
    let up = resize_rgb(input, WIDTH, HEIGHT, WIDTH * SCALE, HEIGHT * SCALE).unwrap();
    up == output
}

/// Every input came out once, in order, with its timestamps.
fn assert_every_frame_out(run: &LiveRun, frames: u32) {
    assert_eq!(run.inputs.len(), frames as usize, "frames in");
    let pts: Vec<gst::ClockTime> = run.outputs.iter().map(|(p, _)| *p).collect();
    let mut expected: Vec<gst::ClockTime> = run.inputs.keys().copied().collect();
    expected.sort();
    assert_eq!(pts, expected, "one output per input, in order");
}

#[test]
fn bicubic_keeps_a_slow_model_to_the_reported_latency() {
    init();
    let model = tiny_model();
    const FRAMES: u32 = 250;
    let run = run_live(&model, "bicubic", FRAMES);
    assert_every_frame_out(&run, FRAMES);
    let stream = Duration::from_millis(40 * u64::from(FRAMES));
    let budget = stream + Duration::from_nanos(run.latency.nseconds()) + Duration::from_secs(2);
    assert!(
        run.wall <= budget,
        "{FRAMES} frames took {:?}, more than the stream's {:?} + latency {} + 2 s",
        run.wall,
        stream,
        run.latency
    );
    // The model cannot keep up: some frames are degraded, and exactly those are
    // the bicubic upscale of their input; the others are the model's.
    assert!(!run.degraded.is_empty(), "a model 3x too slow kept up");
    let mut model_frames = 0;
    for (pts, out) in &run.outputs {
        let degraded = run.degraded.contains(pts);
        assert_eq!(
            is_bicubic(&run.inputs[pts], out),
            degraded,
            "frame at {pts}: degraded {degraded}"
        );
        model_frames += usize::from(!degraded);
    }
    assert_eq!(model_frames + run.degraded.len(), FRAMES as usize);
    eprintln!(
        "{} of {FRAMES} frames degraded, wall {:?}, latency {}",
        run.degraded.len(),
        run.wall,
        run.latency
    );
}

#[test]
fn wait_upscales_every_live_frame_with_the_model() {
    init();
    let model = tiny_model();
    const FRAMES: u32 = 41;
    let run = run_live(&model, "wait", FRAMES);
    assert_every_frame_out(&run, FRAMES);
    assert!(run.degraded.is_empty(), "wait degraded {:?}", run.degraded);
    for (pts, out) in &run.outputs {
        assert!(
            !is_bicubic(&run.inputs[pts], out),
            "frame at {pts} is the bicubic upscale"
        );
    }
}
