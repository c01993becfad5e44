//! The element against the engine on the same input.
//!
//! `cargo run --release --example element_bench -- --model-dir DIR [--width 64] [--height 64]
//!  [--frames 41] [--scale 4] [--rounds 2] [--warmup 1]`
//!
//! Runs `videotestsrc num-buffers=N pattern=smpte ! video/x-raw,format=RGB,WxH
//! ! flashvsr ! fakesink` as fast as it goes, and the engine alone on the same
//! frames (collected from the same source first: the model's work depends on
//! the pixels). After `--warmup` rounds that are not counted (the process's
//! first run maps its allocator's memory and faults in its code), it runs
//! `--rounds` rounds of one run each, alternating which goes first (a run after
//! another finds the process warmer). It prints every run, with the process's
//! minor page faults and CPU seconds over it, then `element_fps=<mean>`,
//! `engine_fps=<mean>` and their ratio. Both clocks start at the first frame,
//! after the model is loaded (the element loads it going to PAUSED, before the
//! source streams), and stop at the last frame out.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use clap::Parser;
use gst::prelude::*;
use gstflashvsr::engine::{Engine, EngineSettings, RgbFrame};

/// Runs the flashvsr element and then the engine alone on the same synthetic
/// frames, and prints both frame rates and their ratio.
#[derive(Parser, Debug)]
struct Args {
    /// Folder with the FlashVSR weight files
    #[arg(long, value_name = "DIR")]
    model_dir: PathBuf,

    /// Width of the input frames
    #[arg(long, value_name = "W", default_value_t = 64)]
    width: u32,

    /// Height of the input frames
    #[arg(long, value_name = "H", default_value_t = 64)]
    height: u32,

    /// Number of frames to stream
    #[arg(long, value_name = "N", default_value_t = 41)]
    frames: u32,

    /// Upscaling factor: 2, 3 or 4
    #[arg(long, value_name = "S", default_value_t = 4)]
    scale: u32,

    /// Runs of each, in alternating order (element first in the first round)
    #[arg(long, value_name = "N", default_value_t = 2)]
    rounds: u32,

    /// Rounds run first and not counted: the process's first run maps its
    /// allocator's memory and faults in its code and caches
    #[arg(long, value_name = "N", default_value_t = 1)]
    warmup: u32,
}

/// GStreamer, with this crate's elements registered.
fn init() -> Result<(), String> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            gst::init().map_err(|e| e.to_string())?;
            gstflashvsr::plugin_register_static().map_err(|e| e.to_string())
        })
        .clone()
}

/// The frames both sides take: `videotestsrc`'s SMPTE bars, packed RGB.
fn source(a: &Args) -> String {
    format!(
        "videotestsrc num-buffers={} pattern=smpte ! video/x-raw,format=RGB,width={},height={},framerate=25/1",
        a.frames, a.width, a.height
    )
}

/// Plays `pipeline` to its end; returns when the end of stream reached the bus.
fn run_to_eos(pipeline: &gst::Element) -> Result<Instant, String> {
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| format!("{e:?}"))?;
    let bus = pipeline.bus().ok_or("pipeline without bus")?;
    let result = loop {
        let Some(msg) = bus.timed_pop(gst::ClockTime::NONE) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => break Ok(Instant::now()),
            gst::MessageView::Error(e) => break Err(format!("{}: {:?}", e.error(), e.debug())),
            _ => {}
        }
    };
    let _ = pipeline.set_state(gst::State::Null);
    result
}

fn element_fps(a: &Args) -> Result<f64, String> {
    init()?;
    let desc = format!(
        "{} ! flashvsr name=sr model-dir=\"{}\" scale={} ! fakesink sync=false",
        source(a),
        a.model_dir.display(),
        a.scale
    );
    let pipeline = gst::parse::launch(&desc).map_err(|e| e.to_string())?;
    let first_frame: Arc<Mutex<Option<Instant>>> = Arc::default();
    let sink_pad = pipeline
        .downcast_ref::<gst::Bin>()
        .and_then(|bin| bin.by_name("sr"))
        .and_then(|sr| sr.static_pad("sink"))
        .ok_or("no flashvsr sink pad in the pipeline")?;
    let seen = first_frame.clone();
    sink_pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        if let Ok(mut first) = seen.lock() {
            first.get_or_insert_with(Instant::now);
        }
        gst::PadProbeReturn::Remove
    });
    let end = run_to_eos(&pipeline)?;
    let start = first_frame
        .lock()
        .ok()
        .and_then(|f| *f)
        .ok_or("end of stream before any frame")?;
    Ok(a.frames as f64 / (end - start).as_secs_f64())
}

/// The frames `videotestsrc` gives the element, as packed RGB: the engine
/// runs on the same pixels (the model's work depends on them: the sparse
/// attention's kept blocks, the values' magnitudes).
fn source_frames(a: &Args) -> Result<Vec<RgbFrame>, String> {
    init()?;
    let desc = format!("{} ! fakesink name=sink sync=false", source(a));
    let pipeline = gst::parse::launch(&desc).map_err(|e| e.to_string())?;
    let sink_pad = pipeline
        .downcast_ref::<gst::Bin>()
        .and_then(|bin| bin.by_name("sink"))
        .and_then(|sink| sink.static_pad("sink"))
        .ok_or("no fakesink pad in the source pipeline")?;
    let frames: Arc<Mutex<Vec<RgbFrame>>> = Arc::default();
    let collected = frames.clone();
    let (width, height) = (a.width, a.height);
    sink_pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let data = info
            .buffer()
            .and_then(|b| b.map_readable().ok())
            .map(|m| m.as_slice().to_vec());
        if let (Some(data), Ok(mut frames)) = (data, collected.lock()) {
            frames.push(RgbFrame {
                width,
                height,
                data,
            });
        }
        gst::PadProbeReturn::Ok
    });
    run_to_eos(&pipeline)?;
    let frames = std::mem::take(&mut *frames.lock().map_err(|e| e.to_string())?);
    if frames.len() != a.frames as usize {
        return Err(format!(
            "videotestsrc gave {} frames for {}",
            frames.len(),
            a.frames
        ));
    }
    Ok(frames)
}

fn engine_fps(a: &Args, frames: &[RgbFrame]) -> Result<f64, String> {
    let settings = EngineSettings {
        model_dir: a.model_dir.clone(),
        scale: a.scale,
        ..Default::default()
    };
    let mut engine = Engine::<u32>::new(settings).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut out = 0usize;
    for (i, frame) in frames.iter().enumerate() {
        out += engine
            .push(frame.clone(), i as u32)
            .map_err(|e| e.to_string())?
            .len();
    }
    out += engine.finish().map_err(|e| e.to_string())?.len();
    if out != frames.len() {
        return Err(format!("engine returned {out} frames for {}", frames.len()));
    }
    Ok(frames.len() as f64 / start.elapsed().as_secs_f64())
}

/// The process's minor page faults and CPU seconds (user, system) so far.
fn usage() -> (i64, f64, f64) {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    (ru.ru_minflt, secs(ru.ru_utime), secs(ru.ru_stime))
}

/// One run of the element (`run_element`) or of the engine; prints the
/// process's page faults and CPU time over it and returns its frame rate.
fn run_once(args: &Args, frames: &[RgbFrame], run_element: bool) -> Result<f64, String> {
    let what = if run_element { "element" } else { "engine" };
    let before = usage();
    let fps = if run_element {
        element_fps(args)
    } else {
        engine_fps(args, frames)
    }
    .map_err(|e| format!("{what} failed: {e}"))?;
    let after = usage();
    println!(
        "  {what}: {fps:.4} fps, minor_faults={} user_s={:.1} sys_s={:.1}",
        after.0 - before.0,
        after.1 - before.1,
        after.2 - before.2
    );
    Ok(fps)
}

fn main() -> ExitCode {
    let args = Args::parse();
    println!(
        "{} frames of {}x{} at scale {}",
        args.frames, args.width, args.height, args.scale
    );
    let run = || -> Result<(Vec<f64>, Vec<f64>), String> {
        let frames = source_frames(&args).map_err(|e| format!("source frames: {e}"))?;
        for w in 0..args.warmup {
            println!("warm-up {w} (not counted):");
            run_once(&args, &frames, true)?;
            run_once(&args, &frames, false)?;
        }
        let (mut element, mut engine) = (Vec::new(), Vec::new());
        for round in 0..args.rounds.max(1) {
            println!("round {round}:");
            // element first in even rounds
            for run_element in [round % 2 == 0, round % 2 == 1] {
                let fps = run_once(&args, &frames, run_element)?;
                if run_element {
                    element.push(fps);
                } else {
                    engine.push(fps);
                }
            }
        }
        Ok((element, engine))
    };
    let (element, engine) = match run() {
        Ok(rates) => rates,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (element, engine) = (mean(&element), mean(&engine));
    println!("element_fps={element:.4}");
    println!("engine_fps={engine:.4}");
    println!("element_over_engine={:.3}", element / engine);
    println!("large_blocks {}", gstflashvsr::allocator_stats());
    ExitCode::SUCCESS
}
