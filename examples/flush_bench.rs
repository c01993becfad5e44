//! How fast a flush stops a running chunk, against the time of one DiT block and
//! of the decoder, on the engine the element runs (the element's flush cancels
//! the engine's token and waits for the chunk to return; docs/element.md).
//!
//! `cargo run --release --example flush_bench -- --model-dir DIR [--width 128]
//!  [--height 128] [--scale 4] [--blocks 1]`
//!
//! Make the model with `cargo run --release --example make_model -- --out DIR`
//! (released widths, one DiT block). Runs chunk 0 whole with profiling (the
//! stage times), then twice more cancelling it: half-way through the DiT and
//! half-way through the decoder, and prints how long the chunk took to return
//! after the cancel. All three runs are in this one process, one after the
//! other, so they see the same machine load.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use gstflashvsr::engine::{Engine, EngineError, EngineSettings, LATENCY_FRAMES, RgbFrame};
use gstflashvsr::model::profile::Stage;

/// Times the return of a cancelled chunk against a DiT block and the decoder.
#[derive(Parser, Debug)]
struct Args {
    /// Folder with the FlashVSR weight files
    #[arg(long, value_name = "DIR")]
    model_dir: PathBuf,

    /// Width of the input frames
    #[arg(long, value_name = "W", default_value_t = 128)]
    width: u32,

    /// Height of the input frames
    #[arg(long, value_name = "H", default_value_t = 128)]
    height: u32,

    /// Upscaling factor: 2, 3 or 4
    #[arg(long, value_name = "S", default_value_t = 4)]
    scale: u32,

    /// DiT blocks in the model (to give the time of one)
    #[arg(long, value_name = "N", default_value_t = 1)]
    blocks: u32,
}

fn frame(a: &Args, i: u32) -> RgbFrame {
    RgbFrame {
        width: a.width,
        height: a.height,
        data: (0..a.width * a.height * 3)
            .map(|v| ((v / 3 + i * 7) % 251) as u8)
            .collect(),
    }
}

/// Holds the first 24 frames of a new stream (no chunk runs yet).
fn prime(engine: &mut Engine<u32>, a: &Args) -> Result<(), String> {
    engine.reset();
    for i in 0..LATENCY_FRAMES as u32 - 1 {
        engine.push(frame(a, i), i).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Runs chunk 0 on a new thread, cancels it after `delay`, and returns how long
/// it took to return after the cancel.
fn cancelled_after(
    engine: &mut Engine<u32>,
    a: &Args,
    delay: Duration,
) -> Result<Duration, String> {
    prime(engine, a)?;
    let token = engine.cancel_token();
    let last = frame(a, LATENCY_FRAMES as u32 - 1);
    let (returned, cancelled) = std::thread::scope(|scope| {
        let chunk = scope.spawn(|| {
            let result = engine.push(last, LATENCY_FRAMES as u32 - 1);
            (Instant::now(), result)
        });
        std::thread::sleep(delay);
        let cancelled = Instant::now();
        token.cancel();
        let (returned, result) = chunk.join().expect("the chunk thread");
        (
            returned,
            match result {
                Err(EngineError::Cancelled) => Ok(cancelled),
                Ok(_) => Err("the chunk ended before the cancel".to_owned()),
                Err(e) => Err(e.to_string()),
            },
        )
    });
    token.clear();
    Ok(returned.saturating_duration_since(cancelled?))
}

fn run(a: &Args) -> Result<(), String> {
    let settings = EngineSettings {
        model_dir: a.model_dir.clone(),
        scale: a.scale,
        ..Default::default()
    };
    let mut engine = Engine::<u32>::new(settings).map_err(|e| e.to_string())?;
    engine.set_profiling(true);
    prime(&mut engine, a)?;
    let started = Instant::now();
    let out = engine
        .push(frame(a, LATENCY_FRAMES as u32 - 1), 0)
        .map_err(|e| e.to_string())?;
    let whole = started.elapsed();
    let profile = engine
        .take_profiles()
        .into_iter()
        .next()
        .ok_or("no chunk profile")?;
    // pre-upscale and tensor conversions come before the LQ projection
    let lq = profile.times.get(Stage::PreUpscale)
        + profile.times.get(Stage::Conversions)
        + profile.times.get(Stage::LqProjection);
    let dit = profile.times.get(Stage::Dit);
    let decoder = profile.times.get(Stage::Decoder);
    println!(
        "chunk 0 ({} frames out, {}x{} output): {:.3} s; up to the LQ projection's end {:.3} s, DiT {:.3} s ({} blocks: {:.3} s each), decoder {:.3} s",
        out.len(),
        a.width * a.scale,
        a.height * a.scale,
        whole.as_secs_f64(),
        lq.as_secs_f64(),
        dit.as_secs_f64(),
        a.blocks,
        dit.as_secs_f64() / f64::from(a.blocks.max(1)),
        decoder.as_secs_f64()
    );
    engine.set_profiling(false);
    let in_dit = cancelled_after(&mut engine, a, lq + dit / 2)?;
    println!(
        "cancelled half-way through the DiT: returned in {:.3} s",
        in_dit.as_secs_f64()
    );
    let in_decoder = cancelled_after(&mut engine, a, lq + dit + decoder / 2)?;
    println!(
        "cancelled half-way through the decoder: returned in {:.3} s",
        in_decoder.as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flush_bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}
