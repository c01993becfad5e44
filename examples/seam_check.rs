//! The seam check of tiled streams on a real clip: decodes the first frames of a
//! video (default `../shared/media/bikes.mp4`), scaled to the input size asked
//! for, upscales them through the engine in tiles (default: the `sparse-v1.1`
//! golden fixture model) and prints the mean gradient across tile borders and
//! inside tiles (`devtools::seams`), then the same figures of the untiled output
//! at the same places, for reference.
//!
//! `cargo run --release --example seam_check -- [--clip FILE] [--model-dir DIR]
//!  [--model-version v1|v1-1] [--size WxH] [--frames N] [--tile-size T] [--tile-overlap O]`
//!
//! Prints `border_gradient=`, `inside_gradient=`, the untiled output's figures at
//! the same places, `seam_excess=` (the tiled border/inside ratio over the
//! untiled one: above 1, the tiles add a step the image does not have) and
//! `seam_ok=true|false` (border no larger than inside, or no excess above 5%:
//! a clip can be sharper along the border columns than on average, which the
//! untiled output shows too); exits non-zero on an error, not on a seam.

#[path = "common/cli.rs"]
mod cli;
#[path = "common/clip.rs"]
mod clip;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gstflashvsr::devtools::seams::{SeamStats, borders};
use gstflashvsr::engine::{
    Engine, EngineSettings, ModelVersion, RgbFrame, SIZE_MULTIPLE, TILE_ALIGN,
};
use gstflashvsr::model::tiling::spans;

/// Upscales the first frames of a real clip tiled and untiled and compares the
/// gradients across tile borders with those inside tiles.
#[derive(Parser, Debug)]
struct Args {
    /// The clip to decode (any format GStreamer's decodebin reads)
    #[arg(long, value_name = "FILE", default_value = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/media/bikes.mp4"
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

    /// Input size the clip is scaled to, as WIDTHxHEIGHT (output: 4 times)
    #[arg(long, value_name = "WxH", default_value = "160x68", value_parser = cli::parse_size)]
    size: (u32, u32),

    /// Frames to upscale
    #[arg(long, value_name = "N", default_value_t = 25)]
    frames: usize,

    /// Side of the tiles in output pixels
    #[arg(long, value_name = "T", default_value_t = 256)]
    tile_size: u32,

    /// Output pixels neighbouring tiles overlap by
    #[arg(long, value_name = "O", default_value_t = EngineSettings::default().tile_overlap)]
    tile_overlap: u32,
}

/// Upscales `frames` with `settings`; returns the output frames and the plan.
fn upscale(
    settings: EngineSettings,
    frames: &[RgbFrame],
) -> Result<(Vec<RgbFrame>, String), String> {
    let mut engine = Engine::new(settings).map_err(|e| e.to_string())?;
    let plan = engine
        .plan(frames[0].width, frames[0].height)
        .map_err(|e| e.to_string())?
        .to_string();
    let mut out = Vec::new();
    for (i, frame) in frames.iter().enumerate() {
        out.extend(engine.push(frame.clone(), i).map_err(|e| e.to_string())?);
    }
    out.extend(engine.finish().map_err(|e| e.to_string())?);
    Ok((out.into_iter().map(|(f, _)| f).collect(), plan))
}

fn run() -> Result<bool, String> {
    let args = Args::parse();
    let frames = clip::decode(&args.clip, args.size, args.frames)?;
    let settings = EngineSettings {
        model_dir: args.model_dir.clone(),
        model_version: args.model_version,
        tile_size: args.tile_size,
        tile_overlap: args.tile_overlap,
        ..EngineSettings::default()
    };
    let (tiled, plan) = upscale(settings.clone(), &frames)?;
    println!("tiled: {plan}");
    let (untiled, _) = upscale(
        EngineSettings {
            tile_size: 0,
            ..settings
        },
        &frames,
    )?;
    let (w, h) = (tiled[0].width as usize, tiled[0].height as usize);
    // the padded frame's tiles, cropped to the output
    let padded = |side: usize| side.div_ceil(128) * 128;
    let tile = args.tile_size as usize;
    let overlap = args.tile_overlap as usize;
    let axis = |len: usize| -> Result<Vec<usize>, String> {
        let spans = spans(padded(len), tile, overlap, TILE_ALIGN, SIZE_MULTIPLE)
            .map_err(|e| e.to_string())?;
        Ok(borders(&spans, len))
    };
    let (columns, rows) = (axis(w)?, axis(h)?);
    println!("borders: columns {columns:?}, rows {rows:?}");
    let stats = |frames: &[RgbFrame]| {
        let mut seams = SeamStats::default();
        for f in frames {
            seams.add_frame(&f.data, w, h, &columns, &rows);
        }
        seams
    };
    let (t, u) = (stats(&tiled), stats(&untiled));
    println!("border_gradient={:.3}", t.border());
    println!("inside_gradient={:.3}", t.inside());
    println!(
        "untiled at the same places: border {:.3}, inside {:.3}",
        u.border(),
        u.inside()
    );
    let excess = (t.border() / t.inside()) / (u.border() / u.inside());
    println!("seam_excess={excess:.3}");
    let ok = t.border() <= t.inside() || excess <= 1.05;
    println!("seam_ok={ok}");
    Ok(ok)
}

fn main() -> ExitCode {
    match run() {
        Ok(_) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
