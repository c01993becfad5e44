//! Block-sparse self-attention of one steady chunk, every path side by side.
//!
//! `cargo run --release --example attention_bench -- [--width 1408] [--height 768]
//!  [--heads 12] [--device cpu|cuda:N] [--precision f32|bf16|f16]
//!  [--paths fast,fast-bf16,gathered,masked,fused,dense] [--reps 3]`
//!
//! See `examples/common/attention_cmd.rs` for what it builds, times and prints;
//! the GPU bundle runs the same as `gpu_check attention`.

#[path = "common/attention_cmd.rs"]
mod attention;

use clap::Parser;

fn main() -> std::process::ExitCode {
    attention::run(attention::Cli::parse())
}
