//! The body of the `make_model` example, shared with `gpu_check` (its `make-model`
//! subcommand); the example's own file documents its usage.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use candle_core::{DType, Device};
use clap::Parser;
use gstflashvsr::devtools::random_model::{RandomModelSpec, WanVaeSpec, write_model_dir};
use gstflashvsr::layers::kernels::KernelPath;
use gstflashvsr::model::{FlashVsrModel, ModelOptions};

/// Writes a model folder with the released widths, file names and formats but
/// random weights, for benchmarks without the released files.
#[derive(Parser, Debug)]
pub struct Cli {
    /// Folder to write
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// Number of DiT blocks (the release has 30)
    #[arg(long, value_name = "N", default_value_t = 1)]
    blocks: usize,

    /// Seed of the random weights
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,

    /// Also write the Wan2.1 VAE (Wan2.1_VAE.pth, the full-mode decoder's weights) at
    /// the released width (base width 96, 127 M parameters, 508 MB)
    #[arg(long)]
    wan_vae: bool,

    /// Also write the Wan2.1 VAE, at base width N (decoder widths 4N, 4N, 2N, N; the
    /// release has 96)
    #[arg(long, value_name = "N")]
    wan_vae_dim: Option<usize>,

    /// Then load the folder on the CPU in f32 and print the sizes the loader read
    #[arg(long)]
    load: bool,
}

/// Runs the example on parsed arguments (also `gpu_check`'s subcommand).
pub fn run(args: Cli) -> ExitCode {
    let wan_vae = match (args.wan_vae, args.wan_vae_dim) {
        (_, Some(dim)) => Some(WanVaeSpec::with_dim(dim)),
        (true, None) => Some(WanVaeSpec::released()),
        (false, None) => None,
    };
    let spec = RandomModelSpec {
        seed: args.seed,
        wan_vae,
        ..RandomModelSpec::released(args.blocks)
    };
    let start = Instant::now();
    if let Err(e) = write_model_dir(&spec, &args.out) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "wrote {} ({} DiT blocks, seed {}) in {seconds:.1} s",
        args.out.display(),
        spec.dit_blocks,
        spec.seed
    );
    let (mut all_tensors, mut all_parameters, mut all_bytes) = (0, 0, 0);
    for file in spec.files() {
        let bytes = std::fs::metadata(args.out.join(file.name)).map_or(0, |m| m.len());
        println!(
            "  {:<52} {:>4} tensors {:>14} parameters  {:<4} {:>14} bytes",
            file.name,
            file.tensors.len(),
            file.parameters(),
            file.dtype.as_str(),
            bytes
        );
        all_tensors += file.tensors.len();
        all_parameters += file.parameters();
        all_bytes += bytes;
    }
    println!(
        "  {:<52} {all_tensors:>4} tensors {all_parameters:>14} parameters       {all_bytes:>14} bytes",
        "total"
    );
    if args.load {
        let opts = ModelOptions {
            device: Device::Cpu,
            dtype: DType::F32,
            kernels: KernelPath::Fast,
            attention: gstflashvsr::engine::AttentionKernel::Auto,
            decoder: gstflashvsr::model::decoder::DecoderKind::Tiny,
        };
        let start = Instant::now();
        match FlashVsrModel::load(&args.out, &opts) {
            Ok(model) => {
                println!(
                    "loaded in {:.1} s\n  {:?}\n  {:?}\n  {:?}",
                    start.elapsed().as_secs_f64(),
                    model.dit().config(),
                    model.lq_proj().config(),
                    model.decoder()
                );
            }
            Err(e) => {
                eprintln!("error: loading {}: {e}", args.out.display());
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
