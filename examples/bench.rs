//! Stage timings of the engine on synthetic frames.
//!
//! `cargo run --release --example bench -- --model-dir DIR --width W --height H [--frames N] [--scale S]
//!  [--precision f32|bf16|f16] [--sparse-ratio R] [--local-range L] [--kv-ratio K] [--device cpu|cuda:N]
//!  [--portable] [--no-replays] [--tile-size T] [--tile-overlap O] [--decoder-tile-size D]
//!  [--max-memory BYTES]`
//!
//! Streams N synthetic frames through the engine and prints, per steady-state
//! chunk, the time of each stage, then `fps=<value>` (frames out per second of
//! wall time, first chunk included), `steady_fps=<value>` (frames of the chunks
//! after the first over their time) and `dit_efficiency=<value>`: the time the
//! DiT's matrix products take alone (the same shapes and dtype, replayed in this
//! run) divided by the DiT's time; `--no-replays` skips those replays, which take
//! longer than the run itself. It prints the tile plan the engine chose before
//! streaming and, at the end, `peak_rss_mib=<value>`: the process's peak resident
//! memory (VmHWM, loading the weights included) and `stream_peak_rss_mib=<value>`,
//! the peak while streaming (the peak is reset once the weights are loaded).
//! Make a model folder with the released widths with
//! `cargo run --release --example make_model`.

#[path = "common/bench_cmd.rs"]
mod bench_cmd;
#[path = "common/cli.rs"]
mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    bench_cmd::run(bench_cmd::Cli::parse())
}
