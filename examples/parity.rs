//! `cargo run --release --example parity -- <case-dir> [--device cpu|cuda:N]
//! [--precision f32|bf16|f16] [--portable]`: checks this crate against a golden
//! case made by the official FlashVSR pipeline. Prints one line per compared
//! tensor, then `PASS` or `FAIL: <tensor>`; exits 0 only on PASS.
//!
//! In f32 the bounds are the fixtures' own; bf16 and f16 are held to the looser
//! bounds of `devtools::parity::Tolerances::for_dtype`.

#[path = "common/cli.rs"]
mod cli;
#[path = "common/parity_cmd.rs"]
mod parity_cmd;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    parity_cmd::run(parity_cmd::Cli::parse())
}
