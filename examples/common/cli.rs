//! Command-line flag groups that several examples share, as `clap` argument
//! structs to `#[command(flatten)]` into an example's own `Parser`. Each example
//! includes this file with `#[path = "common/cli.rs"] mod cli;`.
//!
//! Engine values (device, precision) are parsed by the engine's own parsers, so
//! an example accepts exactly the spellings the engine and the element accept.

// Every example includes the whole file but flattens only the groups it needs.
#![allow(dead_code)]

use std::path::PathBuf;

use clap::Args;
use gstflashvsr::engine::{AttentionKernel, DecoderKind, DeviceSpec, EngineSettings, Precision};
use gstflashvsr::layers::kernels::KernelPath;

/// Where and in which floating-point type the model computes.
#[derive(Args, Debug, Clone, Copy)]
pub struct ComputeArgs {
    /// Device to run on: "cpu", or "cuda:N" in a build with the `cuda` feature
    #[arg(long, value_name = "cpu|cuda:N", default_value_t = DeviceSpec::Cpu, value_parser = DeviceSpec::parse)]
    pub device: DeviceSpec,

    /// Floating-point type the model computes in
    #[arg(long, value_name = "f32|bf16|f16", default_value_t = Precision::default())]
    pub precision: Precision,
}

/// The choice between the CPU fast paths and the portable candle-op path.
#[derive(Args, Debug, Clone, Copy)]
pub struct KernelArgs {
    /// Run the portable candle-op path (the one CUDA takes) on the CPU too,
    /// instead of the CPU fast paths
    #[arg(long)]
    pub portable: bool,

    /// Block-sparse attention of the portable path: "auto" (the fused CUDA
    /// kernel when its check at load passes, else gathered), "fused",
    /// "gathered" or "masked"
    #[arg(long, value_name = "auto|fused|gathered|masked", default_value_t = AttentionKernel::Auto)]
    pub attention: AttentionKernel,
}

impl KernelArgs {
    pub fn path(self) -> KernelPath {
        if self.portable {
            KernelPath::Portable
        } else {
            KernelPath::Fast
        }
    }
}

/// The engine settings the engine-driving examples take: the model folder, the
/// device and precision, and the stream tuning. Defaults are
/// `EngineSettings::default()`'s.
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// Folder with the FlashVSR weight files
    #[arg(long, value_name = "DIR")]
    pub model_dir: PathBuf,

    /// Upscaling factor: 2, 3 or 4
    #[arg(long, value_name = "S", default_value_t = EngineSettings::default().scale)]
    pub scale: u32,

    #[command(flatten)]
    pub compute: ComputeArgs,

    /// Share of attention blocks kept (scaled to the frame size by the model)
    #[arg(long, value_name = "R", default_value_t = EngineSettings::default().sparse_ratio)]
    pub sparse_ratio: f64,

    /// Time windows of 2 latent frames kept in the KV cache
    #[arg(long, value_name = "R", default_value_t = EngineSettings::default().kv_ratio)]
    pub kv_ratio: f64,

    /// Width, in 8x8-token blocks, of the spatial window attention may look at
    #[arg(long, value_name = "L", default_value_t = EngineSettings::default().local_range)]
    pub local_range: u32,

    /// Decoder: "tiny" (the TCDecoder) or "wan" (the Wan2.1 VAE decoder, FlashVSR's
    /// full mode; the folder must also hold Wan2.1_VAE.pth)
    #[arg(long, value_name = "tiny|wan", default_value_t = DecoderKind::Tiny)]
    pub decoder: DecoderKind,
}

impl EngineArgs {
    /// These flags over `EngineSettings::default()`; the engine validates them.
    pub fn settings(&self) -> EngineSettings {
        EngineSettings {
            model_dir: self.model_dir.clone(),
            scale: self.scale,
            precision: self.compute.precision,
            device: self.compute.device.to_string(),
            sparse_ratio: self.sparse_ratio,
            kv_ratio: self.kv_ratio,
            local_range: self.local_range,
            decoder: self.decoder,
            ..EngineSettings::default()
        }
    }
}

/// Parses "WxH" into (width, height), for `value_parser`.
pub fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let (w, h) = text
        .split_once('x')
        .ok_or_else(|| format!("{text:?} is not WIDTHxHEIGHT"))?;
    let side = |v: &str| {
        v.parse::<u32>()
            .map_err(|_| format!("{text:?}: {v:?} is not a whole number"))
    };
    Ok((side(w)?, side(h)?))
}
