//! Sparse against dense self-attention at the released head layout.
//!
//! `cargo run --release --example attention_bench -- [--width 1024] [--height 1024]
//!  [--sparse-ratio 2] [--local-range 11] [--kv-ratio 3] [--heads 12]`
//!
//! Builds one steady-state chunk's queries (one time window of a W x H output)
//! and keys/values (the cached time windows plus the chunk's own), makes the
//! block mask as the model does (pooled scores, local window, top-k), then times
//! the block-sparse attention and plain dense attention over the same keys, and
//! checks the sparse result against a dense masked reference.
//! Prints `sparse_ms`, `dense_ms`, `sparse_over_dense` and `max_abs_error`.

use std::process::ExitCode;
use std::time::Instant;

use candle_core::{Device, Result, Tensor};
use clap::Parser;
use gstflashvsr::layers::sparse_attention::{self, SparseConfig, TokenGrid};

/// Times block-sparse against dense self-attention for one steady-state chunk
/// and checks the sparse result against a dense masked reference.
#[derive(Parser, Debug)]
struct Cli {
    /// Output width in pixels
    #[arg(long, value_name = "W", default_value_t = 1024)]
    width: usize,

    /// Output height in pixels
    #[arg(long, value_name = "H", default_value_t = 1024)]
    height: usize,

    /// Share of attention blocks kept (scaled to the frame size)
    #[arg(long, value_name = "R", default_value_t = 2.0)]
    sparse_ratio: f64,

    /// Width, in 8x8-token blocks, of the spatial window attention may look at
    #[arg(long, value_name = "L", default_value_t = 11)]
    local_range: usize,

    /// Time windows of 2 latent frames kept in the KV cache
    #[arg(long, value_name = "K", default_value_t = 3.0)]
    kv_ratio: f64,

    /// Attention heads (the release has 12)
    #[arg(long, value_name = "N", default_value_t = 12)]
    heads: usize,
}

fn run() -> Result<bool> {
    let Cli {
        width,
        height,
        sparse_ratio,
        local_range,
        kv_ratio,
        heads,
    } = Cli::parse();
    let dev = Device::Cpu;
    let cfg = SparseConfig::new(sparse_ratio, kv_ratio, local_range, height, width);
    // A steady-state chunk: 2 latent frames of queries, the cache's time windows
    // plus its own as keys.
    let grid = TokenGrid {
        frames: 2,
        rows: height / 16,
        cols: width / 16,
    };
    grid.check()?;
    let nb = grid.blocks_per_time_window();
    let nq = nb;
    let nk = nb * (cfg.kv_time_windows + 1);
    let q = Tensor::randn(0f32, 1.0, (heads, nq, 128, 128), &dev)?;
    let k = Tensor::randn(0f32, 1.0, (heads, nk, 128, 128), &dev)?;
    let v = Tensor::randn(0f32, 1.0, (heads, nk, 128, 128), &dev)?;
    let bias = sparse_attention::local_bias(grid, nq, nk, local_range, &dev)?;
    let mask = sparse_attention::block_mask(&q, &k, &bias, grid, cfg.topk_ratio)?;
    let kept = mask
        .to_dtype(candle_core::DType::F32)?
        .mean_all()?
        .to_scalar::<f32>()?;
    println!(
        "output {width}x{height}: {heads} heads, {nq} query windows, {nk} key windows, topk_ratio {:.3}, kept {:.1}% of window pairs",
        cfg.topk_ratio,
        kept * 100.0
    );

    let start = Instant::now();
    let sparse = sparse_attention::sparse_attention(&q, &k, &v, &mask)?;
    let sparse_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let dense = sparse_attention::dense_attention(&q, &k, &v)?;
    let dense_s = start.elapsed().as_secs_f64();
    drop(dense);
    let reference = sparse_attention::dense_masked_attention(&q, &k, &v, &mask)?;
    let err = (sparse - reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
    println!("sparse_ms={:.1}", sparse_s * 1e3);
    println!("dense_ms={:.1}", dense_s * 1e3);
    println!("sparse_over_dense={:.3}", sparse_s / dense_s);
    println!("max_abs_error={err:.2e}");
    Ok(err < 1e-4)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("sparse attention differs from the dense masked reference");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
