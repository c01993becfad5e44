//! Streams many small frames through the engine and watches the resident memory:
//! after the first 500 frames it must grow by at most 5%, and the stream must not fail
//! however long it runs (the official code stops after about 4,000 frames).
//!
//! engine_memory [--model-dir DIR] [--frames N] [--size WxH]
//! Default: the fixture model `../shared/golden/tiny-v1/model`, 5,000 frames of 32x32.
//! Prints `frame=<n> rss_kib=<v>` every 500 frames; exits non-zero on failure.

#[path = "common/cli.rs"]
mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gstflashvsr::engine::{Engine, EngineSettings, ModelVersion, RgbFrame};

const REPORT_EVERY: usize = 500;
const MAX_GROWTH_PERCENT: f64 = 5.0;

/// VmRSS of this process in KiB (Linux).
fn rss_kib() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("/proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS line in /proc/self/status".to_owned())
}

/// A frame whose content moves with `index` (a scrolling pattern).
fn moving_frame(width: u32, height: u32, index: usize) -> RgbFrame {
    let mut data = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height as usize {
        for x in 0..width as usize {
            let u = x + index;
            let v = y + index / 2;
            data.extend_from_slice(&[(u * 8) as u8, (v * 8) as u8, ((u ^ v) * 4) as u8]);
        }
    }
    RgbFrame {
        width,
        height,
        data,
    }
}

/// Streams many small frames through the engine and fails if the resident
/// memory grows by more than 5% after the first 500 frames.
#[derive(Parser, Debug)]
struct Args {
    /// Folder with the FlashVSR weight files
    #[arg(long, value_name = "DIR", default_value = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/golden/tiny-v1/model"
    ))]
    model_dir: PathBuf,

    /// Number of frames to stream
    #[arg(long, value_name = "N", default_value_t = 5000)]
    frames: usize,

    /// Size of the input frames, as WIDTHxHEIGHT
    #[arg(long, value_name = "WxH", default_value = "32x32", value_parser = cli::parse_size)]
    size: (u32, u32),
}

fn run() -> Result<(), String> {
    let args = Args::parse();
    // the settings of the fixture model's own case
    let settings = EngineSettings {
        model_dir: args.model_dir.clone(),
        model_version: ModelVersion::V1,
        sparse_ratio: 2.0,
        kv_ratio: 3.0,
        local_range: 11,
        ..EngineSettings::default()
    };
    let mut engine = Engine::new(settings).map_err(|e| e.to_string())?;
    let (width, height) = args.size;
    let mut received_out = 0usize;
    let mut baseline = None;
    let mut peak_after_baseline = 0u64;
    let started = std::time::Instant::now();
    for index in 0..args.frames {
        let ready = engine
            .push(moving_frame(width, height, index), index)
            .map_err(|e| format!("frame {index}: {e}"))?;
        for (_, tag) in ready {
            if tag != received_out {
                return Err(format!("frame {tag} came out where {received_out} was due"));
            }
            received_out += 1;
        }
        let n = index + 1;
        if n % REPORT_EVERY == 0 {
            let rss = rss_kib()?;
            println!(
                "frame={n} rss_kib={rss} out={received_out} elapsed_s={:.1}",
                started.elapsed().as_secs_f64()
            );
            match baseline {
                None => baseline = Some(rss),
                Some(_) => peak_after_baseline = peak_after_baseline.max(rss),
            }
        }
    }
    received_out += engine.finish().map_err(|e| format!("finish: {e}"))?.len();
    if received_out != args.frames {
        return Err(format!("{} frames in, {received_out} out", args.frames));
    }
    let Some(baseline) = baseline else {
        println!("fewer than {REPORT_EVERY} frames: no growth measured");
        return Ok(());
    };
    let growth = peak_after_baseline.saturating_sub(baseline) as f64 / baseline as f64 * 100.0;
    println!("growth_after_frame_{REPORT_EVERY}_percent={growth:.2}");
    if growth > MAX_GROWTH_PERCENT {
        return Err(format!(
            "resident memory grew by {growth:.2}% after frame {REPORT_EVERY} (limit {MAX_GROWTH_PERCENT}%)"
        ));
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
