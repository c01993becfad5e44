//! Softmax over the last dimension, with a CPU fast path.
//!
//! candle's CPU softmax calls the scalar `exp` per element, which makes the
//! attention softmax cost a large fraction of the attention products. On the CPU
//! this module uses an exp built from a range reduction and a polynomial that the
//! compiler vectorises (AVX2/FMA when the processor has them, picked at run
//! time); accuracy is within a few f32 ulps. Other devices and dtypes use
//! candle's own kernel.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

/// Softmax over the last dimension, computed in f32 whatever the input dtype.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x32 = x.to_dtype(DType::F32)?;
    let y = if x32.device().is_cpu() {
        x32.contiguous()?.apply_op1_no_bwd(&FastSoftmax)?
    } else {
        candle_nn::ops::softmax_last_dim(&x32)?
    };
    y.to_dtype(dtype)
}

struct FastSoftmax;

impl CustomOp1 for FastSoftmax {
    fn name(&self) -> &'static str {
        "fast-softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("fast softmax: f32 input only")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("fast softmax: input must be contiguous")
        };
        let src = &data[start..end];
        let dims = layout.shape().dims();
        let row = dims.last().copied().unwrap_or(1).max(1);
        let mut dst = vec![0f32; src.len()];
        use rayon::prelude::*;
        src.par_chunks(row)
            .zip(dst.par_chunks_mut(row))
            .for_each(|(s, d)| softmax_row(s, d));
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

fn softmax_row(src: &[f32], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the features the function is compiled for were just detected.
            unsafe { softmax_row_avx2(src, dst) };
            return;
        }
    }
    softmax_row_portable(src, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_row_avx2(src: &[f32], dst: &mut [f32]) {
    softmax_row_portable(src, dst)
}

#[inline(always)]
fn softmax_row_portable(src: &[f32], dst: &mut [f32]) {
    let max = src.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    if max == f32::NEG_INFINITY {
        // every entry masked out: no probability mass anywhere
        dst.iter_mut().for_each(|d| *d = 0.0);
        return;
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = fast_exp(s - max);
    }
    // Pairwise-ish sum in 8 lanes keeps the reduction vectorisable.
    let mut lanes = [0f32; 8];
    let mut chunks = dst.chunks_exact(8);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    let sum: f32 = lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>();
    let inv = 1.0 / sum;
    dst.iter_mut().for_each(|d| *d *= inv);
}

/// `e^x` for `x <= 0` (softmax inputs after subtracting the max): `2^n * e^r`
/// with `n = round(x / ln 2)`, `r = x - n ln 2` taken in two parts (Cody-Waite)
/// so that large `|x|` keeps full precision, and `e^r` from a degree-7
/// polynomial on `|r| <= ln(2) / 2`.
#[inline(always)]
fn fast_exp(x: f32) -> f32 {
    // Below -87, e^x is under f32's normal range: flush to zero (masked entries
    // are -inf). A select, so the loop still vectorises.
    let underflow = x < -87.0;
    let x = x.max(-87.0);
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let n = (x * std::f32::consts::LOG2_E).round();
    let r = (x - n * LN2_HI) - n * LN2_LO;
    const C: [f32; 8] = [
        1.0,
        1.0,
        0.5,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5040.0,
    ];
    let p = C[0]
        + r * (C[1] + r * (C[2] + r * (C[3] + r * (C[4] + r * (C[5] + r * (C[6] + r * C[7]))))));
    let bits = ((n as i32 + 127) << 23) as u32;
    if underflow {
        0.0
    } else {
        p * f32::from_bits(bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn exp_is_accurate() {
        for i in 0..20_000 {
            let x = -(i as f32) * 0.0043;
            let (a, b) = (fast_exp(x), x.exp());
            assert!((a - b).abs() <= 3e-7 * b, "x={x}: {a} vs {b}");
        }
        assert_eq!(fast_exp(-1000.0), 0.0);
        assert_eq!(fast_exp(f32::NEG_INFINITY), 0.0);
    }

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
}
