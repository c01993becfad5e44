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
