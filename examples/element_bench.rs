//! The element against the engine on the same input.
//!
//! `cargo run --release --example element_bench -- --model-dir DIR [--width 64] [--height 64]
//!  [--frames 41] [--scale 4] [--rounds 2]`
//!
//! Runs `videotestsrc num-buffers=N ! video/x-raw,format=RGB,WxH ! flashvsr ! fakesink`
//! as fast as it goes, and the engine alone on the same number of frames of the
//! same size, `--rounds` times each, alternating which goes first (a run after
//! another finds the process warmer: its allocator's memory mapped, its caches
//! filled), and prints every run (with the process's minor page faults and
//! CPU seconds in it), then `element_fps=<mean>`,
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

    /// Runs of each, in alternating order (element first in odd rounds)
    #[arg(long, value_name = "N", default_value_t = 2)]
    rounds: u32,
}

fn element_fps(a: &Args) -> Result<f64, String> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            gst::init().map_err(|e| e.to_string())?;
            gstflashvsr::plugin_register_static().map_err(|e| e.to_string())
        })
        .clone()?;
    let desc = format!(
        "videotestsrc num-buffers={} pattern=smpte ! video/x-raw,format=RGB,width={},height={},framerate=25/1 \
         ! flashvsr name=sr model-dir=\"{}\" scale={} ! fakesink sync=false",
        a.frames,
        a.width,
        a.height,
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
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| format!("{e:?}"))?;
    let bus = pipeline.bus().ok_or("pipeline without bus")?;
    let result = loop {
        let Some(msg) = bus.timed_pop(gst::ClockTime::NONE) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => {
                let start = first_frame
                    .lock()
                    .ok()
                    .and_then(|f| *f)
                    .ok_or("end of stream before any frame")?;
                break Ok(a.frames as f64 / start.elapsed().as_secs_f64());
            }
            gst::MessageView::Error(e) => break Err(format!("{}: {:?}", e.error(), e.debug())),
            _ => {}
        }
    };
    let _ = pipeline.set_state(gst::State::Null);
    result
}

fn engine_fps(a: &Args) -> Result<f64, String> {
    let settings = EngineSettings {
        model_dir: a.model_dir.clone(),
        scale: a.scale,
        ..Default::default()
    };
    let mut engine = Engine::<u32>::new(settings).map_err(|e| e.to_string())?;
    let frame = |i: u32| RgbFrame {
        width: a.width,
        height: a.height,
        data: (0..a.width * a.height * 3)
            .map(|v| ((v + i * 7) % 251) as u8)
            .collect(),
    };
    let start = Instant::now();
    let mut out = 0usize;
    for i in 0..a.frames {
        out += engine.push(frame(i), i).map_err(|e| e.to_string())?.len();
    }
    out += engine.finish().map_err(|e| e.to_string())?.len();
    if out != a.frames as usize {
        return Err(format!("engine returned {out} frames for {}", a.frames));
    }
    Ok(a.frames as f64 / start.elapsed().as_secs_f64())
}

/// The process's minor page faults and CPU seconds (user, system) so far.
fn usage() -> (i64, f64, f64) {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    (ru.ru_minflt, secs(ru.ru_utime), secs(ru.ru_stime))
}

fn main() -> ExitCode {
    let args = Args::parse();
    println!(
        "{} frames of {}x{} at scale {}",
        args.frames, args.width, args.height, args.scale
    );
    let (mut element, mut engine) = (Vec::new(), Vec::new());
    for round in 0..args.rounds.max(1) {
        let order: [bool; 2] = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for run_element in order {
            let before = usage();
            let result = if run_element {
                element_fps(&args).map(|fps| element.push(fps))
            } else {
                engine_fps(&args).map(|fps| engine.push(fps))
            };
            if let Err(e) = result {
                let what = if run_element {
                    "element pipeline"
                } else {
                    "engine"
                };
                eprintln!("{what} failed: {e}");
                return ExitCode::FAILURE;
            }
            let after = usage();
            println!(
                "  {}: minor_faults={} user_s={:.1} sys_s={:.1}",
                if run_element { "element" } else { "engine" },
                after.0 - before.0,
                after.1 - before.1,
                after.2 - before.2
            );
        }
        println!(
            "round {round}: element {:.4} fps, engine {:.4} fps",
            element[round as usize], engine[round as usize]
        );
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (element, engine) = (mean(&element), mean(&engine));
    println!("element_fps={element:.4}");
    println!("engine_fps={engine:.4}");
    println!("element_over_engine={:.3}", element / engine);
    println!("large_blocks {}", gstflashvsr::allocator_stats());
    ExitCode::SUCCESS
}
