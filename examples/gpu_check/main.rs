//! The one program of the GPU bundle (`scripts/gpu-bundle.sh`, docs/device-path.md
//! section "Checking a GPU machine"): everything a GPU machine without a Rust
//! toolchain runs, as subcommands of one binary built with `--features cuda`.
//!
//! - `probe [--device cuda:0]`: opens the device, runs one product on it and
//!   prints what it reads back and the device's free memory; the bundle's
//!   `run.sh` calls it first, so that a binary that cannot start (a missing
//!   library, no driver) is told apart from a failing check;
//! - `parity CASE_DIR ...`: the `parity` example (full or compact golden cases);
//! - `make-model --out DIR --blocks N`: the `make_model` example;
//! - `bench ...`: the `bench` example;
//! - `attention ...`: the `attention_bench` example (every self-attention
//!   path of one steady chunk side by side);
//! - `compact CASE_DIR OUT_DIR`: writes a golden case in compact form
//!   (`devtools::parity::write_compact`), on the CPU machine that builds the
//!   bundle.

#[path = "../common/attention_cmd.rs"]
mod attention;
#[path = "../common/bench_cmd.rs"]
mod bench;
#[path = "../common/cli.rs"]
mod cli;
#[path = "../common/make_model_cmd.rs"]
mod make_model;
#[path = "../common/parity_cmd.rs"]
mod parity;

use std::path::PathBuf;
use std::process::ExitCode;

use candle_core::{DType, Tensor};
use clap::{Parser, Subcommand};
use gstflashvsr::devtools::parity::{GoldenCase, write_compact};
use gstflashvsr::engine::DeviceSpec;
use gstflashvsr::engine::memory::{device_free_memory, human_bytes};

/// Checks, benchmarks and model folders for a GPU machine, in one binary.
#[derive(Parser, Debug)]
#[command(name = "gpu_check")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Opens the device and runs one product there
    Probe {
        /// Device to open: "cpu", or "cuda:N"
        #[arg(long, value_name = "cpu|cuda:N", default_value = "cuda:0", value_parser = DeviceSpec::parse)]
        device: DeviceSpec,
    },
    /// Checks the model against a golden case (full or compact)
    Parity(parity::Cli),
    /// Writes a model folder with the released widths and random weights
    MakeModel(make_model::Cli),
    /// Streams synthetic frames through the engine and prints stage timings
    Bench(bench::Cli),
    /// Times every self-attention path of one steady chunk side by side
    Attention(attention::Cli),
    /// Writes a golden case in compact form
    Compact {
        /// A golden case folder, laid out like ../shared/golden/<case>
        #[arg(value_name = "CASE_DIR")]
        case_dir: PathBuf,
        /// The folder to write
        #[arg(value_name = "OUT_DIR")]
        out_dir: PathBuf,
    },
}

/// Opens `spec`, multiplies two small matrices there and checks the product
/// read back; prints the device's free memory.
fn probe(spec: DeviceSpec) -> ExitCode {
    let device = match spec.open() {
        Ok(d) => d,
        Err(e) => {
            println!("probe: FAIL: {e}");
            return ExitCode::FAILURE;
        }
    };
    let product = (|| -> candle_core::Result<Vec<f32>> {
        let a = Tensor::arange(0f32, 6.0, &device)?.reshape((2, 3))?;
        let b = Tensor::ones((3, 2), DType::F32, &device)?;
        a.matmul(&b)?.flatten_all()?.to_vec1::<f32>()
    })();
    match product {
        // rows 0+1+2 and 3+4+5, in both columns
        Ok(v) if v == [3.0, 3.0, 12.0, 12.0] => {
            let free = device_free_memory(&device).map_or_else(|| "n/a".to_owned(), human_bytes);
            println!(
                "probe: {spec} ok (a 2x3 by 3x2 product read back exactly), free memory {free}"
            );
            ExitCode::SUCCESS
        }
        Ok(v) => {
            println!("probe: FAIL: {spec} computed {v:?} for [3, 3, 12, 12]");
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("probe: FAIL: {spec}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn compact(case_dir: PathBuf, out_dir: PathBuf) -> ExitCode {
    let result = GoldenCase::load(&case_dir).and_then(|case| write_compact(&case, &out_dir));
    match result {
        Ok(report) => {
            println!(
                "compact {} -> {}: kept {} tensors ({}): {}; dropped {}",
                case_dir.display(),
                out_dir.display(),
                report.kept.len(),
                human_bytes(report.bytes as u64),
                report.kept.join(" "),
                report.dropped.join(" ")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: compact {}: {e}", case_dir.display());
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Probe { device } => probe(device),
        Command::Parity(args) => parity::run(args),
        Command::MakeModel(args) => make_model::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Attention(args) => attention::run(args),
        Command::Compact { case_dir, out_dir } => compact(case_dir, out_dir),
    }
}
