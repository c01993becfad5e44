//! The body of the `attention_bench` example and of `gpu_check attention`:
//! one steady chunk's block-sparse self-attention at the released head layout
//! (12 heads of 128), every path side by side on one device.
//!
//! Builds the chunk's queries (one time window of a W x H output) and
//! keys/values (the cached time windows plus the chunk's own), makes the block
//! mask as the model does (pooled scores, local window, top-k), by bisection
//! and, on CUDA, by the selection kernel, then times each attention path and
//! compares it with the gathered path in f32 (equal to the dense masked
//! reference within 1e-5, `layers::gathered_attention`'s tests). Prints the
//! work each path does (window pairs, products in TFLOP) and
//! `<path>_ms=`, `<path>_max_abs_error=`, `mask_<method>_ms=` and
//! `masked_over_<path>=` lines.

use std::process::ExitCode;
use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor};
use clap::Parser;
use gstflashvsr::engine::{DeviceSpec, Precision};
use gstflashvsr::layers::attention_path::{self, AttentionPath, DeviceKernels};
use gstflashvsr::layers::gathered_attention::{RowChunks, gathered_attention, kept_counts};
use gstflashvsr::layers::kernels::{self, KernelPath};
use gstflashvsr::layers::masked_attention::SCORE_BUDGET_BYTES;
use gstflashvsr::layers::products::{self, CpuProducts};
use gstflashvsr::layers::sparse_attention::{self, SparseConfig, TokenGrid};

/// Times every block-sparse attention path of one steady chunk against the
/// others and checks each against the gathered path in f32.
#[derive(Parser, Debug)]
pub struct Cli {
    /// Output width in pixels
    #[arg(long, value_name = "W", default_value_t = 1408)]
    width: usize,

    /// Output height in pixels (a multiple of 128 after padding: 1088 -> 1152)
    #[arg(long, value_name = "H", default_value_t = 768)]
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

    /// Device: "cpu", or "cuda:N" in a build with the `cuda` feature
    #[arg(long, value_name = "cpu|cuda:N", default_value_t = DeviceSpec::Cpu, value_parser = DeviceSpec::parse)]
    device: DeviceSpec,

    /// Type of the queries, keys and values
    #[arg(long, value_name = "f32|bf16|f16", default_value_t = Precision::F32)]
    precision: Precision,

    /// Paths to time, comma-separated, among fast (the CPU's, f32), fast-bf16
    /// (the CPU's with bf16 products, f32 inputs; needs AVX512_BF16), masked,
    /// gathered, fused (CUDA, bf16/f16) and dense (every key, no mask);
    /// default: every path the device and precision have, without dense
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    paths: Vec<String>,

    /// Timed runs of each path, after one untimed
    #[arg(long, value_name = "N", default_value_t = 3)]
    reps: usize,
}

/// One path's product work: window pairs and TFLOP (two products of
/// 128 x 128 x 128 per pair and head).
fn work(pairs: usize) -> String {
    let flop = pairs as f64 * 4.0 * 128f64.powi(3);
    format!("{pairs} window pairs, {:.3} TFLOP", flop / 1e12)
}

/// Mean milliseconds of `reps` runs of `f`, after one untimed run, with the
/// device synchronised around each.
fn timed(device: &Device, reps: usize, f: &dyn Fn() -> Result<Tensor>) -> Result<(f64, Tensor)> {
    let mut out = f()?;
    device.synchronize()?;
    let start = Instant::now();
    for _ in 0..reps {
        out = f()?;
    }
    device.synchronize()?;
    Ok((
        start.elapsed().as_secs_f64() * 1e3 / reps.max(1) as f64,
        out,
    ))
}

fn portable(attention: AttentionPath, select_kernel: bool) -> DeviceKernels {
    DeviceKernels {
        attention,
        select_kernel,
    }
}

fn bench(cli: &Cli) -> Result<bool> {
    let device = cli
        .device
        .open()
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let dtype = cli.precision.dtype();
    let cfg = SparseConfig::new(
        cli.sparse_ratio,
        cli.kv_ratio,
        cli.local_range,
        cli.height,
        cli.width,
    );
    let grid = TokenGrid {
        frames: 2,
        rows: cli.height / 16,
        cols: cli.width / 16,
    };
    grid.check()?;
    let (heads, nq) = (cli.heads, grid.blocks_per_time_window());
    let nk = nq * (cfg.kv_time_windows + 1);
    let random = |windows: usize| -> Result<Tensor> {
        Tensor::randn(0f32, 1.0, (heads, windows, 128, 128), &device)?.to_dtype(dtype)
    };
    let (q, k, v) = (random(nq)?, random(nk)?, random(nk)?);
    let bias = sparse_attention::local_bias(grid, nq, nk, cli.local_range, &device)?;
    println!(
        "output {}x{}: {heads} heads, {nq} query windows, {nk} key windows, topk_ratio {:.3}, device {}, {}",
        cli.width, cli.height, cfg.topk_ratio, cli.device, cli.precision
    );

    // The mask, by each way of finding the top-k threshold the device has.
    let make_mask = |select_kernel: bool| {
        kernels::run_with(KernelPath::Portable, || {
            attention_path::run_with(portable(AttentionPath::Masked, select_kernel), || {
                sparse_attention::block_mask(&q, &k, &bias, grid, cfg.topk_ratio)
            })
        })
    };
    let (bisection_ms, mask) = timed(&device, cli.reps, &|| make_mask(false))?;
    println!("mask_bisection_ms={bisection_ms:.2}");
    let mut ok = true;
    if device.is_cuda() {
        let (select_ms, selected) = timed(&device, cli.reps, &|| make_mask(true))?;
        let differing = mask
            .ne(&selected)?
            .to_dtype(DType::U32)?
            .sum_all()?
            .to_scalar::<u32>()?;
        println!("mask_select_ms={select_ms:.2}");
        println!("mask_select_entries_differing={differing}");
        ok &= differing == 0;
    }

    let kept = mask.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()? as usize;
    let counts = kept_counts(&mask)?;
    let width = counts.iter().copied().max().unwrap_or(0);
    // each chunk of rows pads to its widest row
    println!("masked work: {}", work(heads * nq * nk));
    println!(
        "gathered work: {} (rows keep {} to {width} of {nk} windows)",
        work(
            RowChunks::new(&counts, 128, dtype.size_in_bytes(), SCORE_BUDGET_BYTES).padded_pairs()
        ),
        counts.iter().min().unwrap_or(&0)
    );
    println!(
        "fused work: {} ({:.1}% of the pairs kept)",
        work(kept),
        100.0 * kept as f64 / (heads * nq * nk) as f64
    );

    let wide = |t: &Tensor| t.to_dtype(DType::F32);
    let reference = kernels::run_with(KernelPath::Portable, || {
        gathered_attention(&wide(&q)?, &wide(&k)?, &wide(&v)?, &mask)
    })?;
    let default_paths: Vec<&str> = match (device.is_cuda(), dtype) {
        (true, DType::F32) => vec!["masked", "gathered"],
        (true, _) => vec!["masked", "gathered", "fused"],
        (false, DType::F32) if products::bf16_available() => {
            vec!["fast", "fast-bf16", "gathered", "masked"]
        }
        (false, DType::F32) => vec!["fast", "gathered", "masked"],
        (false, _) => vec!["gathered", "masked"],
    };
    let paths: Vec<&str> = if cli.paths.is_empty() {
        default_paths
    } else {
        cli.paths.iter().map(String::as_str).collect()
    };
    let mut times = Vec::new();
    for path in paths {
        let run = |attention: AttentionPath| -> Result<Tensor> {
            kernels::run_with(KernelPath::Portable, || {
                attention_path::run_with(portable(attention, false), || {
                    sparse_attention::sparse_attention(&q, &k, &v, &mask)
                })
            })
        };
        let result = match path {
            "fast" => timed(&device, cli.reps, &|| {
                kernels::run_with(KernelPath::Fast, || {
                    sparse_attention::sparse_attention(&q, &k, &v, &mask)
                })
            }),
            "fast-bf16" => timed(&device, cli.reps, &|| {
                kernels::run_with(KernelPath::Fast, || {
                    sparse_attention::sparse_attention_with(&q, &k, &v, &mask, CpuProducts::Bf16)
                })
            }),
            "masked" => timed(&device, cli.reps, &|| run(AttentionPath::Masked)),
            "gathered" => timed(&device, cli.reps, &|| run(AttentionPath::Gathered)),
            "fused" => timed(&device, cli.reps, &|| run(AttentionPath::Fused)),
            "dense" => timed(&device, cli.reps, &|| {
                sparse_attention::dense_attention(&q, &k, &v)
            }),
            other => candle_core::bail!(
                "unknown path {other:?}: expected fast, fast-bf16, masked, gathered, fused or dense"
            ),
        };
        let (ms, out) = match result {
            Ok(r) => r,
            Err(e) => {
                println!("{path}: FAIL: {e}");
                ok = false;
                continue;
            }
        };
        println!("{path}_ms={ms:.2}");
        if path != "dense" {
            let err = (out.to_dtype(DType::F32)? - &reference)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            println!("{path}_max_abs_error={err:.3e}");
            // bf16 operands (the half types, or the CPU's bf16 products)
            // round values of unit scale at 2^-8
            let bound = if dtype == DType::F32 && path != "fast-bf16" {
                1e-4
            } else {
                5e-2
            };
            ok &= err <= bound;
        }
        times.push((path, ms));
    }
    if let Some(&(_, masked)) = times.iter().find(|(p, _)| *p == "masked") {
        for (path, ms) in times.iter().filter(|(p, _)| *p != "masked") {
            println!("masked_over_{path}={:.2}", masked / ms);
        }
    }
    Ok(ok)
}

/// Runs the benchmark on parsed arguments; fails when a path errs or differs
/// from the reference beyond 1e-4 (f32) or 5e-2 (bf16/f16).
pub fn run(cli: Cli) -> ExitCode {
    match bench(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            println!("FAIL: a path failed or differs from the gathered f32 result");
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("FAIL: {e}");
            ExitCode::FAILURE
        }
    }
}
