//! The CPU convolution paths on the decoder's and the LQ projection's layer
//! shapes.
//!
//! `cargo run --release --example conv_bench -- [--size 512] [--repeats 3]
//!  [--max-frames 2] [--only decoder|lq|all] [--no-candle] [--filter NAME]`
//!
//! For each distinct 3x3 layer shape of one steady 8-frame chunk at a
//! `size x size` output (released widths: decoder 512/256/128/128, LQ
//! projection 2048 and 3072 hidden channels), times the tap path, the Winograd
//! path and candle's own `conv2d` (the portable path) on the same random input,
//! interleaved, best of `--repeats`. Prints per shape the milliseconds per frame
//! and `winograd_over_taps=` (Winograd time / tap time: below 1 is faster), then
//! the same ratio over the whole chunk (each shape weighted by how often a chunk
//! runs it, i.e. by its FLOPs) as `winograd_over_taps_weighted=`. The `cpu_`
//! ratios compare processor time instead, steadier on a busy machine.

use std::process::ExitCode;
use std::time::Instant;

use candle_core::{Device, Result, Tensor};
use clap::{Parser, ValueEnum};
use gstflashvsr::layers::conv::{Conv2d, CpuConvKernel};
use gstflashvsr::layers::kernels::{self, KernelPath};
use gstflashvsr::layers::products::{self, CpuProducts};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Products {
    F32,
    Bf16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Which {
    Decoder,
    Lq,
    All,
}

/// Times the tap, Winograd and candle convolutions on the model's layer shapes.
#[derive(Parser, Debug)]
struct Cli {
    /// Output frame size in pixels (square)
    #[arg(long, value_name = "S", default_value_t = 512)]
    size: usize,

    /// Output tile side of the Winograd path timed: 2 for F(2x2, 3x3), 4 for
    /// F(4x4, 3x3)
    #[arg(long, value_name = "2|4", default_value_t = 2)]
    tile: usize,

    /// Timed runs per path and shape; the best counts
    #[arg(long, value_name = "N", default_value_t = 3)]
    repeats: usize,

    /// Frames per timed call at most (a chunk has up to 8 per layer)
    #[arg(long, value_name = "N", default_value_t = 2)]
    max_frames: usize,

    /// Which model's layers to time
    #[arg(long, value_enum, default_value_t = Which::All)]
    only: Which,

    /// Skip candle's own conv2d (much slower than the other two)
    #[arg(long)]
    no_candle: bool,

    /// Precision of the Winograd path's products: f32, or bf16 with f32 sums
    /// (needs AVX512_BF16; F(2x2) only)
    #[arg(long, value_enum, default_value_t = Products::F32)]
    products: Products,

    /// Time only the shapes whose name contains this
    #[arg(long, value_name = "TEXT", default_value = "")]
    filter: String,
}

/// One layer shape and how many frames of it one chunk computes.
struct Shape {
    name: &'static str,
    c_in: usize,
    c_out: usize,
    side: usize,
    frames_per_chunk: usize,
}

/// The 3x3 layers of one steady chunk (8 output frames = 2 latent frames).
fn shapes(size: usize, which: Which) -> Vec<Shape> {
    let s = |name, c_in, c_out, side, frames_per_chunk| Shape {
        name,
        c_in,
        c_out,
        side,
        frames_per_chunk,
    };
    let l = size / 8;
    let mut out = Vec::new();
    if which != Which::Lq {
        out.extend([
            s("dec.conv_in", 784, 512, l, 2),
            s("dec.s0.mem_a", 1024, 512, l, 2 * 3),
            s("dec.s0.mem_bc+conv_in2", 512, 512, l, 2 * 7),
            s("dec.s0.conv", 512, 256, 2 * l, 2),
            s("dec.s1.mem_a", 512, 256, 2 * l, 2 * 3),
            s("dec.s1.mem_bc", 256, 256, 2 * l, 2 * 6),
            s("dec.s1.conv", 256, 128, 4 * l, 4),
            s("dec.s2.mem_a", 256, 128, 4 * l, 4 * 3),
            s("dec.s2.mem_bc", 128, 128, 4 * l, 4 * 6),
            s("dec.s2.conv+conv_out1", 128, 128, 8 * l, 8 * 2),
            s("dec.conv_out2", 128, 3, 8 * l, 8),
        ]);
    }
    if which != Which::Decoder {
        // Causal 3-D convs as 2-D convs over 4 stacked time taps; 4 frames in,
        // 2 out of the first conv per clip, 1 out of the second.
        let q = size / 16;
        out.extend([
            s("lq.conv1", 4 * 768, 2048, q, 4),
            s("lq.conv2", 4 * 2048, 3072, q, 2),
        ]);
    }
    out
}

/// Processor time of this process, all threads, in ms: `utime + stime` of
/// /proc/self/stat, in Linux's fixed 100 ticks per second. On a machine shared
/// with other work it moves less than wall time does.
fn cpu_ms() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th of the whole line, the 12th and 13th after it.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    match (tick(11), tick(12)) {
        (Some(user), Some(system)) => (user + system) * 10.0,
        _ => f64::NAN,
    }
}

/// Best wall and processor times of a path over the calls made, in ms.
#[derive(Clone, Copy)]
struct Best {
    wall: f64,
    cpu: f64,
}

impl Best {
    const NONE: Self = Self {
        wall: f64::MAX,
        cpu: f64::MAX,
    };
}

/// Runs `f`, keeping its wall and processor times in `best` where lower.
fn time(best: &mut Best, f: impl FnOnce() -> Result<Tensor>) -> Result<Tensor> {
    let (t, c) = (Instant::now(), cpu_ms());
    let y = f()?;
    best.wall = best.wall.min(t.elapsed().as_secs_f64() * 1e3);
    best.cpu = best.cpu.min(cpu_ms() - c);
    Ok(y)
}

fn max_err(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
}

fn run(cli: &Cli) -> Result<()> {
    let dev = Device::Cpu;
    if cli.products == Products::Bf16 && !products::bf16_available() {
        candle_core::bail!("--products bf16: this processor has no AVX512_BF16")
    }
    let (mut taps_total, mut wino_total, mut candle_total) = (0f64, 0f64, 0f64);
    let (mut taps_cpu, mut wino_cpu) = (0f64, 0f64);
    for shape in shapes(cli.size, cli.only)
        .into_iter()
        .filter(|s| s.name.contains(&cli.filter))
    {
        let n = shape.frames_per_chunk.min(cli.max_frames).max(1);
        let x = Tensor::randn(0f32, 1.0, (n, shape.c_in, shape.side, shape.side), &dev)?;
        let scale = (1.0 / (9.0 * shape.c_in as f64).sqrt()) as f32;
        let wt =
            (Tensor::randn(0f32, 1.0, (shape.c_out, shape.c_in, 3, 3), &dev)? * f64::from(scale))?;
        let b = Tensor::randn(0f32, 1.0, shape.c_out, &dev)?;
        let taps = Conv2d::with_cpu_kernel(&wt, Some(b.clone()), CpuConvKernel::Taps)?;
        let kernel = if cli.tile == 4 {
            CpuConvKernel::Winograd4
        } else {
            CpuConvKernel::Winograd
        };
        let products = match cli.products {
            Products::F32 => CpuProducts::F32,
            Products::Bf16 => CpuProducts::Bf16,
        };
        let wino = products::load_with(products, || Conv2d::with_cpu_kernel(&wt, Some(b), kernel))?;
        let (mut b_taps, mut b_wino, mut b_candle) = (Best::NONE, Best::NONE, Best::NONE);
        let mut err = 0f32;
        for _ in 0..cli.repeats.max(1) {
            let a = time(&mut b_taps, || taps.forward(&x))?;
            let w = time(&mut b_wino, || wino.forward(&x))?;
            err = err.max(max_err(&a, &w)?);
            if !cli.no_candle {
                let c = time(&mut b_candle, || {
                    kernels::run_with(KernelPath::Portable, || taps.forward(&x))
                })?;
                err = err.max(max_err(&a, &c)?);
            }
        }
        let (t_taps, t_wino, t_candle) = (b_taps.wall, b_wino.wall, b_candle.wall);
        let per_frame = |t: f64| t / n as f64;
        let weight = shape.frames_per_chunk as f64;
        taps_total += weight * per_frame(t_taps);
        wino_total += weight * per_frame(t_wino);
        candle_total += weight * per_frame(t_candle);
        taps_cpu += weight * per_frame(b_taps.cpu);
        wino_cpu += weight * per_frame(b_wino.cpu);
        let candle = if cli.no_candle {
            String::new()
        } else {
            format!(
                " candle_ms={:.1} winograd_over_candle={:.3}",
                per_frame(t_candle),
                t_wino / t_candle
            )
        };
        println!(
            "{} {}->{} {}x{} frames={n}: taps_ms={:.1} winograd_ms={:.1}{candle} winograd_over_taps={:.3} cpu_winograd_over_taps={:.3} max_abs_diff={err:.2e}",
            shape.name,
            shape.c_in,
            shape.c_out,
            shape.side,
            shape.side,
            per_frame(t_taps),
            per_frame(t_wino),
            t_wino / t_taps,
            b_wino.cpu / b_taps.cpu,
        );
    }
    println!(
        "chunk: taps_ms={taps_total:.0} winograd_ms={wino_total:.0} winograd_over_taps_weighted={:.3}",
        wino_total / taps_total
    );
    println!(
        "chunk: cpu_winograd_over_taps_weighted={:.3} (processor time, all threads)",
        wino_cpu / taps_cpu
    );
    if !cli.no_candle {
        println!(
            "chunk: candle_ms={candle_total:.0} winograd_over_candle_weighted={:.3}",
            wino_total / candle_total
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
