//! Times the decoders alone, chunk by chunk as a stream decodes them (6 latent
//! frames, then 2 per chunk): the TCDecoder and the Wan2.1 VAE decoder of one model
//! folder, on the same latents.
//!
//! `cargo run --release --example decoder_bench -- --model-dir DIR [--size WxH]
//!  [--chunks C] [--decoder tiny|wan|both] [--latents FILE] [--expect FILE]
//!  [--portable] [--device cpu|cuda:N] [--precision f32|bf16|f16] [--products f32|bf16]`
//!
//! The folder needs `TCDecoder.ckpt` for `tiny` and `Wan2.1_VAE.pth` (or its
//! converted safetensors) for `wan`; `make_model --wan-vae` writes both at the
//! released widths. Latents are seeded normal values, or `latents` of `--latents`
//! (what `scripts/bench/wan_decoder_peer.py` wrote, so both sides decode the same);
//! `--expect` compares the Wan decoder's last chunk with that script's
//! `last_chunk.safetensors`. Prints `ours decoder=D chunk=K frames=M seconds=S`
//! per chunk (with the process's peak resident memory since the decoder was
//! loaded) and `ours decoder=D steady_mean_s=S` (the chunks after the first).
//! `scripts/compare-wan-decoder.sh` runs both sides and prints the ratio.

#[path = "common/cli.rs"]
mod cli;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor};
use clap::Parser;
use gstflashvsr::layers::products::{self, CpuProducts};
use gstflashvsr::model::CancelToken;
use gstflashvsr::model::decoder::{Decoder, DecoderState};
use gstflashvsr::model::tcdecoder::{TcDecoder, TcDecoderConfig};
use gstflashvsr::model::wan_decoder::{WanDecoder, WanDecoderConfig};
use gstflashvsr::weights::{ModelFiles, WeightFile};

#[derive(Parser, Debug)]
struct Args {
    /// Folder with the decoders' weight files
    #[arg(long, value_name = "DIR")]
    model_dir: PathBuf,

    /// Output size, WIDTHxHEIGHT (multiples of 8)
    #[arg(long, value_name = "WxH", value_parser = cli::parse_size, default_value = "512x512")]
    size: (u32, u32),

    /// Chunks to decode: the first (6 latent frames) and C - 1 steady ones
    #[arg(long, value_name = "C", default_value_t = 3)]
    chunks: usize,

    /// Which decoders to time
    #[arg(long, value_name = "tiny|wan|both", default_value = "both")]
    decoder: String,

    /// A safetensors file whose `latents` [1, 16, f, H/8, W/8] are decoded
    #[arg(long, value_name = "FILE")]
    latents: Option<PathBuf>,

    /// A safetensors file whose `frames` [8, 3, H, W] the Wan decoder's last chunk
    /// is compared with
    #[arg(long, value_name = "FILE")]
    expect: Option<PathBuf>,

    #[command(flatten)]
    compute: cli::ComputeArgs,

    #[command(flatten)]
    kernels: cli::KernelArgs,

    /// Precision of the CPU's Winograd products: f32 (what the model runs,
    /// whatever `--precision`), or bf16 with f32 sums (needs AVX512_BF16), to
    /// measure what the decoder would gain
    #[arg(long, value_name = "f32|bf16", default_value = "f32")]
    products: String,
}

/// Seeded normal latents (Box-Muller over a xorshift generator).
fn seeded_latents(shape: (usize, usize, usize, usize, usize), device: &Device) -> Result<Tensor> {
    let n = shape.0 * shape.1 * shape.2 * shape.3 * shape.4;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut uniform = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    };
    let values: Vec<f32> = (0..n)
        .map(|_| {
            let (u, v) = (uniform(), uniform());
            (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        })
        .collect();
    Tensor::from_vec(values, shape, device)
}

/// VmHWM of this process in MiB (Linux), the peak resident memory since the
/// start or the last reset.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let bytes = gstflashvsr::engine::memory::parse_meminfo(&status, "VmHWM:")?;
    Some(bytes as f64 / (1024.0 * 1024.0))
}

fn load(args: &Args, kind: &str, device: &Device, dtype: DType) -> Result<Decoder> {
    let files = ModelFiles::open(&args.model_dir);
    let conv_dtype = if device.is_cpu() { DType::F32 } else { dtype };
    match kind {
        "tiny" => {
            let file = files?.decoder;
            let cfg = TcDecoderConfig::from_shapes(|n| file.shape(n))?;
            Ok(Decoder::Tiny(Box::new(TcDecoder::new(
                cfg,
                file.var_builder(conv_dtype, device),
            )?)))
        }
        _ => {
            // the VAE alone is enough: the folder need not hold the other files
            let vae = match files {
                Ok(files) => files.open_wan_vae()?,
                Err(_) => Arc::new(WeightFile::open(
                    &args.model_dir.join(gstflashvsr::weights::WAN_VAE_FILE),
                )?),
            };
            let cfg = WanDecoderConfig::from_shapes(&vae.names(), |n| vae.shape(n))?;
            Ok(Decoder::Wan(Box::new(WanDecoder::new(
                cfg,
                vae.var_builder(conv_dtype, device),
            )?)))
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let device = args
        .compute
        .device
        .open()
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let dtype = args.compute.precision.dtype();
    let (w, h) = (args.size.0 as usize, args.size.1 as usize);
    let latent_frames = 6 + 2 * args.chunks.saturating_sub(1);
    let latents = match &args.latents {
        Some(path) => candle_core::safetensors::load(path, &device)?
            .remove("latents")
            .ok_or_else(|| candle_core::Error::Msg(format!("{}: no 'latents'", path.display())))?,
        None => seeded_latents((1, 16, latent_frames, h / 8, w / 8), &device)?,
    };
    let kinds: Vec<&str> = match args.decoder.as_str() {
        "both" => vec!["tiny", "wan"],
        "tiny" => vec!["tiny"],
        "wan" => vec!["wan"],
        other => candle_core::bail!("--decoder {other:?}: expected tiny, wan or both"),
    };
    println!(
        "output {w}x{h}, {} chunks, device {}, precision {}, kernels {:?}",
        args.chunks,
        args.compute.device,
        args.compute.precision,
        args.kernels.path()
    );
    let products = match args.products.as_str() {
        "f32" => CpuProducts::F32,
        "bf16" if products::bf16_available() && device.is_cpu() => CpuProducts::Bf16,
        "bf16" => candle_core::bail!("--products bf16 needs the CPU and AVX512_BF16"),
        other => candle_core::bail!("--products {other:?}: expected f32 or bf16"),
    };
    println!("cpu products: {products:?}");
    for kind in kinds {
        let decoder = products::load_with(products, || load(args, kind, &device, dtype))?;
        // the decoder's own peak: from here (weights loaded), where the kernel allows
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        println!(
            "ours decoder={kind} loaded peak_rss_mib={}",
            peak_rss_mib().map_or("n/a".to_owned(), |m| format!("{m:.0}"))
        );
        let mut state: DecoderState = decoder.new_state(None);
        let mut steady = Vec::new();
        let mut last = None;
        let mut start = 0;
        for k in 0..args.chunks {
            let n = if k == 0 { 6 } else { 2 };
            let chunk = latents.narrow(2, start, n)?;
            let frames = if k == 0 { 21 } else { 8 };
            // the TCDecoder's condition: mid-grey LQ frames of the output span
            let cond = Tensor::zeros((frames, 3, h, w), DType::F32, &device)?;
            let started = Instant::now();
            let out = gstflashvsr::layers::kernels::run_with(args.kernels.path(), || {
                decoder.decode(&chunk, &cond, &mut state, &CancelToken::new())
            })?;
            device.synchronize()?;
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "ours decoder={kind} chunk={k} frames={} seconds={seconds:.3} peak_rss_mib={}",
                out.dim(0)?,
                peak_rss_mib().map_or("n/a".to_owned(), |m| format!("{m:.0}"))
            );
            if k > 0 {
                steady.push(seconds);
            }
            last = Some(out);
            start += n;
        }
        if !steady.is_empty() {
            println!(
                "ours decoder={kind} steady_mean_s={:.3}",
                steady.iter().sum::<f64>() / steady.len() as f64
            );
        }
        if let (Some(path), "wan", Some(last)) = (&args.expect, kind, last) {
            let want = candle_core::safetensors::load(path, &Device::Cpu)?
                .remove("frames")
                .ok_or_else(|| {
                    candle_core::Error::Msg(format!("{}: no 'frames'", path.display()))
                })?;
            let diff = (last.to_device(&Device::Cpu)?.to_dtype(DType::F32)? - want)?.abs()?;
            println!(
                "ours decoder=wan last_chunk_vs_peer max_abs={:.3e} mean_abs={:.3e}",
                diff.max_all()?.to_scalar::<f32>()?,
                diff.mean_all()?.to_scalar::<f32>()?
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
