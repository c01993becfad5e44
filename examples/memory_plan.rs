//! The memory model's predictions for large outputs: for each output size, the
//! estimate of whole frames and of tiles of each size asked for, with the model
//! folder's widths as loaded (f32 on the CPU) and as they would run on a device
//! at 2 bytes a value (bf16/f16: weights, activations and convolutions).
//!
//! `cargo run --release --example memory_plan -- --model-dir DIR [--size WxH]...
//!  [--tile T]... [--tile-overlap O] [--scale S] [--budget GIB]... [--blocks N]`
//!
//! Defaults: outputs 1920x1080 and 3840x2160 (inputs 480x270 and 960x540 at x4),
//! tiles 512 and 768 overlapping by 64. For each `--budget` (GiB, the whole
//! process: weights included) it also prints the plan the engine would choose
//! (model tiles and decoder tiles) within it. `--blocks 30` predicts the
//! released model from a folder with fewer DiT blocks (`make_model --blocks 1`):
//! the KV cache and the weights grow by the blocks added (each block's weights
//! counted from the widths). Nothing runs: only the estimates.

#[path = "common/cli.rs"]
mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gstflashvsr::engine::memory::{self, ModelShape, human_bytes};
use gstflashvsr::engine::tiles::plan_for_input;
use gstflashvsr::engine::{DecoderKind, Engine, EngineSettings};

/// Prints the memory model's estimates for large outputs, whole and tiled.
#[derive(Parser, Debug)]
struct Args {
    /// Folder with the FlashVSR weight files (its widths and weights are read)
    #[arg(long, value_name = "DIR")]
    model_dir: PathBuf,

    /// Input sizes, as WIDTHxHEIGHT (output: `scale` times)
    #[arg(long = "size", value_name = "WxH", value_parser = cli::parse_size,
          default_values = ["480x270", "960x540"])]
    sizes: Vec<(u32, u32)>,

    /// Tile sides to estimate besides whole frames
    #[arg(long = "tile", value_name = "T", default_values_t = [512u32, 768])]
    tiles: Vec<u32>,

    /// Output pixels neighbouring tiles overlap by
    #[arg(long, value_name = "O", default_value_t = EngineSettings::default().tile_overlap)]
    tile_overlap: u32,

    /// Memory budgets, in GiB of the whole process (weights included), to print
    /// the engine's chosen plan for
    #[arg(long = "budget", value_name = "GIB")]
    budgets: Vec<f64>,

    /// DiT blocks to predict for, instead of the folder's
    #[arg(long, value_name = "N")]
    blocks: Option<usize>,

    /// Upscaling factor
    #[arg(long, value_name = "S", default_value_t = EngineSettings::default().scale)]
    scale: u32,

    /// Decoder: "tiny" or "wan" (the folder must then hold Wan2.1_VAE.pth)
    #[arg(long, value_name = "tiny|wan", default_value_t = DecoderKind::Tiny)]
    decoder: DecoderKind,
}

fn run() -> Result<(), String> {
    let args = Args::parse();
    let settings = EngineSettings {
        model_dir: args.model_dir.clone(),
        scale: args.scale,
        tile_overlap: args.tile_overlap,
        decoder: args.decoder,
        ..EngineSettings::default()
    };
    let engine = Engine::<()>::new(settings.clone()).map_err(|e| e.to_string())?;
    let mut cpu = engine.model_shape();
    if let Some(blocks) = args.blocks {
        let d = &cpu.dit;
        // attention (self and cross: q, k, v, o with biases), feed-forward,
        // norms and modulation; f32 on the CPU
        let block_values =
            8 * (d.dim * d.dim + d.dim) + 2 * d.dim * d.ffn_dim + d.ffn_dim + 20 * d.dim;
        let added = blocks as i64 - d.num_layers as i64;
        cpu.weight_bytes =
            (cpu.weight_bytes as i64 + added * 4 * block_values as i64).max(0) as u64;
        cpu.dit.num_layers = blocks;
    }
    let device = ModelShape {
        dtype_bytes: 2,
        conv_bytes: 2,
        weight_bytes: cpu.weight_bytes / 2,
        can_park: true,
        element_limit: Some(memory::ELEMENT_LIMIT_CUDA),
        ..cpu.clone()
    };
    println!(
        "model: {} DiT blocks, decoder {}, weights {} (f32)",
        cpu.dit.num_layers,
        args.decoder,
        human_bytes(cpu.weight_bytes)
    );
    for (name, shape) in [("f32, CPU", &cpu), ("2-byte values, device", &device)] {
        for &(w, h) in &args.sizes {
            for tile in std::iter::once(0).chain(args.tiles.iter().copied()) {
                let settings = EngineSettings {
                    tile_size: tile,
                    ..settings.clone()
                };
                let plan =
                    plan_for_input(shape, w, h, &settings, None).map_err(|e| e.to_string())?;
                println!(
                    "{name}: output {}x{}, tile {tile}: total {} ({plan})",
                    w * args.scale,
                    h * args.scale,
                    human_bytes(plan.estimate.total())
                );
            }
            for &gib in &args.budgets {
                let total = (gib * (1u64 << 30) as f64) as u64;
                // the plan's budget is what the stream may add to the weights
                let budget = total.saturating_sub(shape.weight_bytes);
                let tile = EngineSettings {
                    tile_size: 0,
                    ..settings.clone()
                };
                let chosen = match plan_for_input(shape, w, h, &tile, Some(budget)) {
                    Ok(plan) => format!("total {} ({plan})", human_bytes(plan.estimate.total())),
                    Err(e) => e.to_string(),
                };
                println!(
                    "{name}: output {}x{}, budget {gib} GiB: {chosen}",
                    w * args.scale,
                    h * args.scale,
                );
            }
        }
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
