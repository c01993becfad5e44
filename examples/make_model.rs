//! Writes a model folder with the released widths, file names and formats but random
//! weights and a chosen number of DiT blocks, for benchmarks without the released files.
//!
//! Usage: `cargo run --release --example make_model -- --out DIR [--blocks N] [--seed S]
//! [--load]` (default: 1 block, seed 0; the release has 30 blocks). `--load` then loads
//! the folder on the CPU in f32 and prints the sizes the loader read from it.

#[path = "common/make_model_cmd.rs"]
mod make_model_cmd;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    make_model_cmd::run(make_model_cmd::Cli::parse())
}
