//! The body of the `parity` example, shared with `gpu_check` (its `parity`
//! subcommand); the example's own file documents its usage.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::cli;
use clap::Parser;
use gstflashvsr::devtools::parity::{self, DecoderCase, GoldenCase, Tolerances};
use gstflashvsr::layers::products;
use gstflashvsr::model::ModelOptions;
use gstflashvsr::model::decoder::DecoderKind;

/// Checks the model against a golden case of the official FlashVSR pipeline
/// and prints PASS or FAIL.
#[derive(Parser, Debug)]
pub struct Cli {
    /// A golden case folder, laid out like ../shared/golden/<case>
    #[arg(value_name = "CASE_DIR")]
    case_dir: PathBuf,

    #[command(flatten)]
    compute: cli::ComputeArgs,

    #[command(flatten)]
    kernels: cli::KernelArgs,

    /// With --precision bf16 on a CPU without AVX512_BF16: run the bf16
    /// products on an emulation of its instruction in f32 arithmetic (slower
    /// than f32), so that the bf16 path's bounds are checked on any CPU
    #[arg(long)]
    emulate_bf16: bool,
}

/// Runs the example on parsed arguments (also `gpu_check`'s subcommand).
pub fn run(cli: Cli) -> ExitCode {
    if cli.emulate_bf16 {
        products::emulate_bf16_products(true);
    }
    if DecoderCase::is_decoder_case(&cli.case_dir) {
        return run_decoder_case(&cli);
    }
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
        attention: cli.kernels.attention,
        decoder: DecoderKind::Tiny,
    };
    println!(
        "device {}, precision {}, kernels {:?}; {}",
        cli.compute.device,
        cli.compute.precision,
        opts.kernels,
        Tolerances::for_dtype(opts.dtype)
    );
    if opts.device.is_cpu() && opts.dtype == candle_core::DType::BF16 {
        println!(
            "cpu products: {}",
            match (products::bf16_available(), products::bf16_emulated()) {
                (true, false) => "bf16 (AVX512_BF16)",
                (true, true) => "bf16 (emulated AVX512_BF16)",
                _ => "f32 (this CPU has no AVX512_BF16; --emulate-bf16 runs the bf16 path)",
            }
        );
    }
    // what the model will resolve the attention setting to, and why
    match gstflashvsr::model::attention_check::resolve(opts.attention, &opts.device, opts.dtype) {
        Ok(choice) => {
            println!("attention: {} (setting {})", choice.kernels, opts.attention);
            for note in &choice.notes {
                println!("warning: {note}");
            }
        }
        Err(e) => {
            println!("FAIL: {e}");
            return ExitCode::FAILURE;
        }
    }
    let mut first_failure: Option<String> = None;
    let mut note = |c: &parity::Comparison| {
        println!("{c}");
        if !c.ok && first_failure.is_none() {
            first_failure = Some(c.name.clone());
        }
    };
    match parity::check_bicubic(&case) {
        Ok(Some(c)) => note(&c),
        Ok(None) => println!("lq_u8: not in this case (compact): made from lr_frames"),
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

/// A decoder case (tests/golden/wan-v1.1): the Wan decoder alone, chunk by
/// chunk, from the case's latents.
fn run_decoder_case(cli: &Cli) -> ExitCode {
    let result = (|| -> candle_core::Result<Vec<parity::Comparison>> {
        let case = DecoderCase::load(&cli.case_dir)?;
        let device = cli
            .compute
            .device
            .open()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let opts = ModelOptions {
            device,
            dtype: cli.compute.precision.dtype(),
            kernels: cli.kernels.path(),
            attention: cli.kernels.attention,
            decoder: DecoderKind::Wan,
        };
        println!(
            "decoder case: Wan2.1 VAE decoder; device {}, precision {}, kernels {:?}; {}",
            cli.compute.device,
            cli.compute.precision,
            opts.kernels,
            Tolerances::for_dtype(opts.dtype)
        );
        parity::check_decoder(&case, &opts, |c| println!("{c}"))
    })();
    match result {
        Ok(all) => match all.iter().find(|c| !c.ok) {
            None => {
                println!("PASS");
                ExitCode::SUCCESS
            }
            Some(c) => {
                println!("FAIL: {}", c.name);
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            println!("FAIL: {e}");
            ExitCode::FAILURE
        }
    }
}
