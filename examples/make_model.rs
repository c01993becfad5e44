//! Writes a model folder with the released widths, file names and formats but random
//! weights and a chosen number of DiT blocks, for benchmarks without the released files.
//!
//! Usage: `cargo run --release --example make_model -- --out DIR [--blocks N] [--seed S]
//! [--load]` (default: 1 block, seed 0; the release has 30 blocks). `--load` then loads
//! the folder on the CPU in f32 and prints the sizes the loader read from it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use candle_core::{DType, Device};
use gstflashvsr::devtools::random_model::{RandomModelSpec, write_model_dir};
use gstflashvsr::layers::kernels::KernelPath;
use gstflashvsr::model::{FlashVsrModel, ModelOptions};

const USAGE: &str = "usage: make_model --out DIR [--blocks N] [--seed S] [--load]";

struct Args {
    out: PathBuf,
    blocks: usize,
    seed: u64,
    load: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut out = None;
    let (mut blocks, mut seed, mut load) = (1usize, 0u64, false);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--out" => out = Some(PathBuf::from(value()?)),
            "--blocks" => {
                let v = value()?;
                blocks = v
                    .parse()
                    .map_err(|_| format!("--blocks: '{v}' is not a block count"))?;
            }
            "--seed" => {
                let v = value()?;
                seed = v
                    .parse()
                    .map_err(|_| format!("--seed: '{v}' is not an unsigned integer"))?;
            }
            "--load" => load = true,
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    let out = out.ok_or("--out DIR is required")?;
    Ok(Args {
        out,
        blocks,
        seed,
        load,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let spec = RandomModelSpec {
        seed: args.seed,
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
        };
        let start = Instant::now();
        match FlashVsrModel::load(&args.out, &opts) {
            Ok(model) => {
                println!(
                    "loaded in {:.1} s\n  {:?}\n  {:?}\n  {:?}",
                    start.elapsed().as_secs_f64(),
                    model.dit().config(),
                    model.lq_proj().config(),
                    model.decoder().config()
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
