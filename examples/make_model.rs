//! Writes a model folder with the released widths, file names and formats but random
//! weights and a chosen number of DiT blocks, for benchmarks without the released files.
//!
//! Usage: `cargo run --release --example make_model -- --out DIR [--blocks N] [--seed S]
//! [--wan-vae | --wan-vae-dim N] [--load]` (default: 1 block, seed 0, no VAE; the release
//! has 30 blocks). `--wan-vae` also writes the Wan2.1 VAE (`Wan2.1_VAE.pth`, the
//! full-mode decoder's weights, which the FlashVSR releases do not include) at the
//! released width, `--wan-vae-dim N` at base width N (96 as released). `--load` then
//! loads the folder on the CPU in f32 and prints the sizes the loader read from it.

#[path = "common/make_model_cmd.rs"]
mod make_model_cmd;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    make_model_cmd::run(make_model_cmd::Cli::parse())
}
