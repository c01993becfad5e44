//! `cargo run --release --example parity -- <case-dir>`: checks this crate
//! against a golden case made by the official FlashVSR pipeline. Prints one line
//! per compared tensor, then `PASS` or `FAIL: <tensor>`; exits 0 only on PASS.

use std::path::PathBuf;
use std::process::ExitCode;

use candle_core::{DType, Device};
use gstflashvsr::devtools::parity::{self, GoldenCase};
use gstflashvsr::layers::kernels::KernelPath;
use gstflashvsr::model::ModelOptions;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: parity <case-dir>   (a folder laid out like ../shared/golden/<case>)");
        return ExitCode::from(2);
    };
    let case = match GoldenCase::load(&dir) {
        Ok(c) => c,
        Err(e) => {
            println!("FAIL: {e}");
            return ExitCode::FAILURE;
        }
    };
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
    let opts = ModelOptions {
        device: Device::Cpu,
        dtype: DType::F32,
        kernels: KernelPath::Fast,
    };
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
