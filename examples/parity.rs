//! `cargo run --release --example parity -- <case-dir> [--device cpu|cuda:N]
//! [--precision f32|bf16|f16] [--portable]`: checks this crate against a golden
//! case made by the official FlashVSR pipeline. Prints one line per compared
//! tensor, then `PASS` or `FAIL: <tensor>`; exits 0 only on PASS.
//!
//! In f32 the bounds are the fixtures' own; bf16 and f16 are held to the looser
//! bounds of `devtools::parity::Tolerances::for_dtype`.

#[path = "common/cli.rs"]
mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gstflashvsr::devtools::parity::{self, GoldenCase, Tolerances};
use gstflashvsr::model::ModelOptions;

/// Checks the model against a golden case of the official FlashVSR pipeline
/// and prints PASS or FAIL.
#[derive(Parser, Debug)]
struct Cli {
    /// A golden case folder, laid out like ../shared/golden/<case>
    #[arg(value_name = "CASE_DIR")]
    case_dir: PathBuf,

    #[command(flatten)]
    compute: cli::ComputeArgs,

    #[command(flatten)]
    kernels: cli::KernelArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let case = match GoldenCase::load(&cli.case_dir) {
        Ok(c) => c,
        Err(e) => {
            println!("FAIL: {e}");
            return ExitCode::FAILURE;
        }
    };
    let device = match cli.compute.device.open() {
        Ok(d) => d,
        Err(e) => {
            println!("FAIL: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = ModelOptions {
        device,
        dtype: cli.compute.precision.dtype(),
        kernels: cli.kernels.path(),
    };
    println!(
        "device {}, precision {}, kernels {:?}; {}",
        cli.compute.device,
        cli.compute.precision,
        opts.kernels,
        Tolerances::for_dtype(opts.dtype)
    );
    let mut first_failure: Option<String> = None;
    let mut note = |c: &parity::Comparison| {
        println!("{c}");
        if !c.ok && first_failure.is_none() {
            first_failure = Some(c.name.clone());
        }
    };
    match parity::check_bicubic(&case) {
        Ok(c) => note(&c),
        Err(e) => {
            println!("FAIL: lq_u8: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Err(e) = parity::check_pipeline(&case, &opts, &mut note) {
        println!("FAIL: {e}");
        return ExitCode::FAILURE;
    }
    match first_failure {
        None => {
            println!("PASS");
            ExitCode::SUCCESS
        }
        Some(name) => {
            println!("FAIL: {name}");
            ExitCode::FAILURE
        }
    }
}
