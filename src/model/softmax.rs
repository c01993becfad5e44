//! Softmax over the last dimension, with a CPU fast path.
//!
//! candle's CPU softmax calls the scalar `exp` per element and writes a new
//! tensor, which made the attention softmax cost a large fraction of the
//! attention products. On the CPU this module uses the vectorised exp of
//! [`fast_math`] (accurate to a few f32 ulps) and, for score tensors that nothing
//! else holds, overwrites them in place instead of allocating as much again.
//! Other devices and dtypes use candle's own kernel.

use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Result, Tensor};
use rayon::prelude::*;

use super::fast_math::{self, simd_kernel};

/// Softmax over the last dimension, computed in f32 whatever the input dtype.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return candle_nn::ops::softmax_last_dim(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype());
    }
    let fresh = if x.dtype() != DType::F32 {
        x.to_dtype(DType::F32)?.contiguous()?
    } else if x.is_contiguous() {
        x.copy()?
    } else {
        x.contiguous()?
    };
    fresh.inplace_op1(&SoftmaxInPlace)?;
    fresh.to_dtype(x.dtype())
}

/// [`softmax_last_dim`] of `scores`, overwriting them when they are a contiguous
/// f32 CPU tensor. Only for tensors whose storage nothing else reads, such as a
/// matmul result just computed.
pub fn softmax_last_dim_in_place(scores: Tensor) -> Result<Tensor> {
    if scores.device().is_cpu() && scores.dtype() == DType::F32 && scores.is_contiguous() {
        scores.inplace_op1(&SoftmaxInPlace)?;
        Ok(scores)
    } else {
        softmax_last_dim(&scores)
    }
}

struct SoftmaxInPlace;

impl InplaceOp1 for SoftmaxInPlace {
    fn name(&self) -> &'static str {
        "softmax-last-dim-in-place"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("fast softmax: f32 input only")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("fast softmax: input must be contiguous")
        };
        let row = layout.shape().dims().last().copied().unwrap_or(1).max(1);
        // Short rows are handed out several at a time.
        let min_rows = (4096 / row).max(1);
        data[start..end]
            .par_chunks_mut(row)
            .with_min_len(min_rows)
            .for_each(softmax_row);
        Ok(())
    }
}

/// Lanes the row reductions keep, so that they vectorise.
const LANES: usize = 16;

simd_kernel! {
    /// Softmax of one row, in place.
    pub(crate) fn softmax_row(row: &mut [f32]) {
        let mut maxes = [f32::NEG_INFINITY; LANES];
        let mut chunks = row.chunks_exact(LANES);
        for c in &mut chunks {
            for (m, &v) in maxes.iter_mut().zip(c) {
                *m = if v > *m { v } else { *m };
            }
        }
        let max = chunks
            .remainder()
            .iter()
            .chain(&maxes)
            .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        if max == f32::NEG_INFINITY {
            // every entry masked out: no probability mass anywhere
            row.fill(0.0);
            return;
        }
        let mut sums = [0f32; LANES];
        let mut chunks = row.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for (s, v) in sums.iter_mut().zip(c.iter_mut()) {
                *v = fast_math::exp(*v - max);
                *s += *v;
            }
        }
        let mut sum = 0f32;
        for v in chunks.into_remainder() {
            *v = fast_math::exp(*v - max);
            sum += *v;
        }
        let inv = 1.0 / (sum + sums.iter().sum::<f32>());
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_candle_softmax() -> Result<()> {
        let x = (Tensor::randn(0f32, 4.0, (7, 133), &Device::Cpu)? - 3.0)?;
        let ours = softmax_last_dim(&x)?;
        let theirs = candle_nn::ops::softmax_last_dim(&x)?;
        let err = (ours - theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 1e-6, "{err}");
        Ok(())
    }

    #[test]
    fn masked_rows_and_half_precision() -> Result<()> {
        let x = Tensor::new(
            &[[f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY], [1.0, 1.0, 1.0]],
            &Device::Cpu,
        )?;
        let y = softmax_last_dim(&x)?.to_vec2::<f32>()?;
        assert_eq!(y[0], vec![0.0, 1.0, 0.0]);
        assert!(y[1].iter().all(|v| (v - 1.0 / 3.0).abs() < 1e-6));
        let all_masked = Tensor::full(f32::NEG_INFINITY, (1, 4), &Device::Cpu)?;
        assert_eq!(
            softmax_last_dim(&all_masked)?.to_vec2::<f32>()?[0],
            vec![0.0; 4]
        );
        let h = softmax_last_dim(&x.to_dtype(DType::BF16)?)?;
        assert_eq!(h.dtype(), DType::BF16);
        Ok(())
    }

    /// The functional form leaves its input alone; the in-place form gives the
    /// same values, also on strided input.
    #[test]
    fn in_place_and_copying_forms_agree() -> Result<()> {
        let x = Tensor::randn(0f32, 3.0, (5, 40), &Device::Cpu)?;
        let before = x.to_vec2::<f32>()?;
        let y = softmax_last_dim(&x)?;
        assert_eq!(x.to_vec2::<f32>()?, before);
        let z = softmax_last_dim_in_place(x.copy()?)?;
        assert_eq!(y.to_vec2::<f32>()?, z.to_vec2::<f32>()?);
        let t = softmax_last_dim_in_place(x.t()?)?;
        let want = candle_nn::ops::softmax_last_dim(&x.t()?.contiguous()?)?;
        let err = (t - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 1e-6, "{err}");
        Ok(())
    }
}
