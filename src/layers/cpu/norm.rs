//! The fused LayerNorm and RMSNorm rows of `layers::norm`: statistics and the
//! affine output in one vectorised pass per row, for f32 CPU tensors.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape};
use rayon::prelude::*;

use super::fast_math::simd_kernel;
use super::gemm::contiguous_f32;

/// Checks that `params` hold one value per feature of `x`; returns the feature count.
fn features(x_layout: &Layout, params: &[&[f32]]) -> Result<usize> {
    let dim = x_layout.shape().dims().last().copied().unwrap_or(1).max(1);
    if let Some(p) = params.iter().find(|p| p.len() != dim) {
        candle_core::bail!("fused norm: {} parameters for {dim} features", p.len())
    }
    Ok(dim)
}

pub(crate) struct FusedLayerNorm {
    pub(crate) eps: f32,
}

impl CustomOp3 for FusedLayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        mul: &CpuStorage,
        mul_layout: &Layout,
        add: &CpuStorage,
        add_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(x, x_layout, self.name(), "input")?;
        let mul = contiguous_f32(mul, mul_layout, self.name(), "scale")?;
        let add = contiguous_f32(add, add_layout, self.name(), "shift")?;
        let dim = features(x_layout, &[mul, add])?;
        let mut out = vec![0f32; src.len()];
        out.par_chunks_mut(dim)
            .zip(src.par_chunks(dim))
            .with_min_len((4096 / dim).max(1))
            .for_each(|(dst, row)| layer_norm_row(row, dst, mul, add, self.eps));
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }
}

pub(crate) struct FusedRmsNorm {
    pub(crate) eps: f32,
}

impl CustomOp2 for FusedRmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(x, x_layout, self.name(), "input")?;
        let weight = contiguous_f32(weight, weight_layout, self.name(), "weight")?;
        let dim = features(x_layout, &[weight])?;
        let mut out = vec![0f32; src.len()];
        out.par_chunks_mut(dim)
            .zip(src.par_chunks(dim))
            .with_min_len((4096 / dim).max(1))
            .for_each(|(dst, row)| rms_norm_row(row, dst, weight, self.eps));
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }
}

/// The RMS norm over the channels of an image batch `[n, c, h, w]` (the Wan VAE's
/// and the LQ projection's `F.normalize(x, dim=1) * sqrt(c) * gamma`), optionally
/// followed by SiLU: one pass for the per-pixel norms (channel rows added pixel-wise),
/// one that writes every row. Both run in parallel, over pixel blocks and over rows.
pub(crate) struct FusedChannelRmsNorm {
    pub(crate) silu: bool,
}

/// Pixels one task of the norms pass sums.
const NORM_PIXELS: usize = 2048;

impl CustomOp2 for FusedChannelRmsNorm {
    fn name(&self) -> &'static str {
        "fused-channel-rms-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        gamma: &CpuStorage,
        gamma_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(x, x_layout, self.name(), "input")?;
        let gamma = contiguous_f32(gamma, gamma_layout, self.name(), "gamma")?;
        let dims = x_layout.shape().dims();
        let [n, c, ..] = *dims else {
            candle_core::bail!("channel RMS norm: input {dims:?} has no channel dimension")
        };
        if gamma.len() != c || c == 0 {
            candle_core::bail!("channel RMS norm: {} scales for {c} channels", gamma.len())
        }
        let pixels = src.len() / (n * c).max(1);
        // per image and pixel: sqrt(c) / max(||x||, 1e-12)
        let mut scale = vec![0f32; n * pixels];
        scale
            .par_chunks_mut(pixels)
            .enumerate()
            .for_each(|(i, image)| {
                let image_src = &src[i * c * pixels..(i + 1) * c * pixels];
                image
                    .par_chunks_mut(NORM_PIXELS)
                    .enumerate()
                    .for_each(|(b, dst)| {
                        let start = b * NORM_PIXELS;
                        channel_norms(image_src, pixels, start, c, dst)
                    });
            });
        let mut out = vec![0f32; src.len()];
        out.par_chunks_mut(pixels)
            .zip(src.par_chunks(pixels))
            .enumerate()
            .for_each(|(row, (dst, x))| {
                let image_scale = &scale[(row / c) * pixels..(row / c + 1) * pixels];
                scale_row(x, image_scale, gamma[row % c], self.silu, dst)
            });
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }
}

simd_kernel! {
    fn channel_norms(image: &[f32], pixels: usize, start: usize, channels: usize, dst: &mut [f32]) {
        let len = dst.len();
        dst.fill(0.0);
        for ch in 0..channels {
            let row = &image[ch * pixels + start..ch * pixels + start + len];
            for (s, &v) in dst.iter_mut().zip(row) {
                *s += v * v;
            }
        }
        let root = (channels as f32).sqrt();
        for s in dst.iter_mut() {
            *s = root / s.sqrt().max(1e-12);
        }
    }
}

simd_kernel! {
    fn scale_row(x: &[f32], scale: &[f32], gamma: f32, silu: bool, dst: &mut [f32]) {
        if silu {
            for ((d, &v), &s) in dst.iter_mut().zip(x).zip(scale) {
                let y = v * s * gamma;
                *d = y / (1.0 + super::fast_math::exp(-y));
            }
        } else {
            for ((d, &v), &s) in dst.iter_mut().zip(x).zip(scale) {
                *d = v * s * gamma;
            }
        }
    }
}

/// Lanes the row sums keep, so that they vectorise.
const LANES: usize = 16;

simd_kernel! {
    fn layer_norm_row(row: &[f32], dst: &mut [f32], mul: &[f32], add: &[f32], eps: f32) {
        let n = row.len() as f32;
        let mean = lane_sum(row, |v| v) / n;
        let var = lane_sum(row, |v| (v - mean) * (v - mean)) / n;
        let rstd = 1.0 / (var + eps).sqrt();
        for (((d, &v), &m), &a) in dst.iter_mut().zip(row).zip(mul).zip(add) {
            *d = (v - mean) * rstd * m + a;
        }
    }
}

simd_kernel! {
    fn rms_norm_row(row: &[f32], dst: &mut [f32], weight: &[f32], eps: f32) {
        let ms = lane_sum(row, |v| v * v) / row.len() as f32;
        let rstd = 1.0 / (ms + eps).sqrt();
        for ((d, &v), &w) in dst.iter_mut().zip(row).zip(weight) {
            *d = v * rstd * w;
        }
    }
}

/// `sum(f(v))` over `row`, accumulated in `LANES` partial sums.
#[inline(always)]
fn lane_sum(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut sums = [0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (s, &v) in sums.iter_mut().zip(c) {
            *s += f(v);
        }
    }
    chunks.remainder().iter().map(|&v| f(v)).sum::<f32>() + sums.iter().sum::<f32>()
}
