//! The seams of segment jobs (docs/segments.md, "Seams"): a real clip through
//! the engine in one pass, then as segments that each start `W` frames early
//! (the warm-up) and keep only the frames they own, as `flashvsr-upscale run`
//! does; prints the PSNR of every segment's first owned frames against the
//! single pass, for each warm-up.
//!
//! `cargo run --release --example segment_seams -- [--clip FILE] [--model-dir DIR]
//!  [--model-version v1|v1-1] [--size WxH] [--scale S] [--frames N] [--segments K] [--warmups 0,25,33,49] [--seam-frames 8]`
//!
//! Prints, per warm-up, `warmup=W`, the per-frame PSNR (dB) of the first
//! `--seam-frames` owned frames of segments 1.. (segment 0 starts with the
//! stream, as the single pass does), and `min_psnr=` over them; frames equal
//! to the single pass count as 99 dB.

#[path = "common/cli.rs"]
mod cli;
#[path = "common/clip.rs"]
mod clip;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gstflashvsr::engine::{Engine, EngineSettings, ModelVersion, RgbFrame};

/// Compares segmented runs of a real clip with one pass, per warm-up.
#[derive(Parser, Debug)]
struct Args {
    /// The clip to decode (any format GStreamer's decodebin reads)
    #[arg(long, value_name = "FILE", default_value = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/media/carphone_pristine.mp4"
    ))]
    clip: PathBuf,

    /// Folder with the FlashVSR weight files
    #[arg(long, value_name = "DIR", default_value = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/golden/sparse-v1.1/model"
    ))]
    model_dir: PathBuf,

    /// Release of the weights in the folder
    #[arg(long, value_name = "v1|v1-1", default_value = "v1-1")]
    model_version: ModelVersion,

    /// Input size the clip is scaled to, as WIDTHxHEIGHT
    #[arg(long, value_name = "WxH", default_value = "176x144", value_parser = cli::parse_size)]
    size: (u32, u32),

    /// Upscaling factor
    #[arg(long, value_name = "S", default_value_t = 2)]
    scale: u32,

    /// Frames of the clip to use
    #[arg(long, value_name = "N", default_value_t = 120)]
    frames: usize,

    /// Segments the frames are split into
    #[arg(long, value_name = "K", default_value_t = 3)]
    segments: usize,

    /// Warm-ups to measure, comma-separated
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_values_t = [0usize, 25, 33, 49])]
    warmups: Vec<usize>,

    /// Owned frames compared at the start of each segment
    #[arg(long, value_name = "N", default_value_t = 8)]
    seam_frames: usize,
}

/// Every output frame of `frames` through a fresh engine stream.
fn upscale(settings: &EngineSettings, frames: &[RgbFrame]) -> Result<Vec<RgbFrame>, String> {
    let mut engine = Engine::<usize>::new(settings.clone()).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(frames.len());
    for (i, frame) in frames.iter().enumerate() {
        out.extend(engine.push(frame.clone(), i).map_err(|e| e.to_string())?);
    }
    out.extend(engine.finish().map_err(|e| e.to_string())?);
    out.sort_by_key(|(_, i)| *i);
    Ok(out.into_iter().map(|(f, _)| f).collect())
}

/// PSNR (dB, 8-bit peak) of `a` against `b`; 99 when equal.
fn psnr(a: &RgbFrame, b: &RgbFrame) -> f64 {
    let mse = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum::<f64>()
        / a.data.len() as f64;
    if mse == 0.0 {
        99.0
    } else {
        10.0 * (255.0f64.powi(2) / mse).log10()
    }
}

fn run(args: &Args) -> Result<(), String> {
    let frames = clip::decode(&args.clip, args.size, args.frames)?;
    let n = frames.len();
    let settings = EngineSettings {
        model_dir: args.model_dir.clone(),
        model_version: args.model_version,
        scale: args.scale,
        ..EngineSettings::default()
    };
    println!(
        "{n} frames of {} at {}x{}, x{}, {} segments, model {}",
        args.clip.display(),
        args.size.0,
        args.size.1,
        args.scale,
        args.segments,
        args.model_dir.display()
    );
    let single = upscale(&settings, &frames)?;
    let starts: Vec<usize> = (0..=args.segments).map(|i| i * n / args.segments).collect();
    for &warmup in &args.warmups {
        let mut psnrs = Vec::new();
        for w in starts.windows(2).skip(1) {
            let (start, end) = (w[0], w[1]);
            // as flashvsr-upscale plans it: from a multiple of 8, with the
            // whole stream's noise
            let from = start.saturating_sub(warmup) / 8 * 8;
            let segment = EngineSettings {
                noise_offset: (from / 4) as u64,
                ..settings.clone()
            };
            let out = upscale(&segment, &frames[from..end])?;
            let owned = &out[start - from..];
            let compared = args.seam_frames.min(owned.len());
            let row: Vec<f64> = (0..compared)
                .map(|k| psnr(&owned[k], &single[start + k]))
                .collect();
            println!(
                "warmup={warmup} segment at frame {start}: {}",
                row.iter()
                    .map(|p| format!("{p:.1}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            psnrs.extend(row);
        }
        let min = psnrs.iter().copied().fold(f64::INFINITY, f64::min);
        let mean = psnrs.iter().sum::<f64>() / psnrs.len().max(1) as f64;
        let rendered = n
            + (1..args.segments)
                .map(|i| starts[i] - starts[i].saturating_sub(warmup) / 8 * 8)
                .sum::<usize>();
        println!(
            "warmup={warmup} min_psnr={min:.1} mean_psnr={mean:.1} work={:.3}",
            rendered as f64 / n as f64
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
