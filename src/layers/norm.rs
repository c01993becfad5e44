//! LayerNorm and RMSNorm over the last dimension, as the reference computes them
//! (in f32, returned in the input's dtype), with a fused CPU path.
//!
//! Written with candle ops, each norm is five to seven passes over the
//! activations, and the adaLN modulation that follows two more. On the CPU, for
//! f32 input, one pass per row does the statistics in cache and writes
//! `(x - mean) * rstd * mul + add` (RMSNorm: `x * rstd * weight`); the adaLN
//! modulation `* (1 + scale) + shift` folds into `mul` and `add`. Other devices
//! and dtypes take the candle-op path.

use candle_core::{D, DType, Result, Tensor};

use super::cpu::norm::{FusedChannelRmsNorm, FusedLayerNorm, FusedRmsNorm};
use super::kernels;

/// LayerNorm without affine parameters.
pub(crate) fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    if let Some(fast) = fused_layer_norm(x, None, eps)? {
        return Ok(fast);
    }
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    centered
        .broadcast_div(&(var + eps)?.sqrt()?)?
        .to_dtype(dtype)
}

/// LayerNorm with weight and bias.
pub(crate) fn layer_norm_affine(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    if let Some(fast) = fused_layer_norm(x, Some((weight, bias)), eps)? {
        return Ok(fast);
    }
    layer_norm(x, eps)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}

/// `layer_norm(x) * (1 + scale) + shift`, the adaLN modulation; `shift` and
/// `scale` hold one value per feature.
pub(crate) fn layer_norm_modulate(
    x: &Tensor,
    shift: &Tensor,
    scale: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    if kernels::cpu_fast_path(x) {
        let mul = (scale.flatten_all()? + 1.0)?;
        return layer_norm_affine(x, &mul, &shift.flatten_all()?, eps);
    }
    layer_norm(x, eps)?
        .broadcast_mul(&(scale + 1.0)?)?
        .broadcast_add(shift)
}

/// Wan's RMSNorm: `x * rsqrt(mean(x^2) + eps)` in f32, cast back, times `weight`.
pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if kernels::cpu_fast_path(x) {
        let weight = weight.to_dtype(DType::F32)?.flatten_all()?;
        return x
            .contiguous()?
            .apply_op2_no_bwd(&weight, &FusedRmsNorm { eps: eps as f32 });
    }
    let dtype = x.dtype();
    let x32 = x.to_dtype(DType::F32)?;
    let ms = x32.sqr()?.mean_keepdim(D::Minus1)?;
    x32.broadcast_div(&(ms + eps)?.sqrt()?)?
        .to_dtype(dtype)?
        .broadcast_mul(weight)
}

/// The RMS norm over the channels (dim 1) of `[n, c, ...]` activations, as the
/// Wan VAE and the LQ projection compute it: `x / max(||x||_2, 1e-12) * sqrt(c) *
/// gamma` in f32 (`F.normalize` times `sqrt(c)`), then SiLU when `silu`; returned
/// in `x`'s dtype. `gamma` holds one value per channel, in any shape.
pub(crate) fn channel_rms_norm(x: &Tensor, gamma: &Tensor, silu: bool) -> Result<Tensor> {
    let c = x.dim(1)?;
    if gamma.elem_count() != c {
        candle_core::bail!(
            "channel RMS norm: gamma {:?} for {c} channels",
            gamma.dims()
        )
    }
    if kernels::cpu_fast_path(x) {
        let gamma = gamma.to_dtype(DType::F32)?.flatten_all()?;
        return x
            .contiguous()?
            .apply_op2_no_bwd(&gamma, &FusedChannelRmsNorm { silu });
    }
    let mut gamma_shape = vec![1; x.rank()];
    gamma_shape[1] = c;
    let gamma = gamma.to_dtype(DType::F32)?.reshape(gamma_shape)?;
    let x32 = x.to_dtype(DType::F32)?;
    let norm = x32.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?;
    let y = (x32.broadcast_div(&norm)? * (c as f64).sqrt())?
        .broadcast_mul(&gamma)?
        .to_dtype(x.dtype())?;
    if silu { y.silu() } else { Ok(y) }
}

/// The fused LayerNorm when `x` is f32 on the CPU; `None` otherwise.
fn fused_layer_norm(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    eps: f64,
) -> Result<Option<Tensor>> {
    if !kernels::cpu_fast_path(x) {
        return Ok(None);
    }
    let dim = x.dim(D::Minus1)?;
    let (mul, add) = match affine {
        Some((w, b)) => (
            w.to_dtype(DType::F32)?.flatten_all()?,
            b.to_dtype(DType::F32)?.flatten_all()?,
        ),
        None => (
            Tensor::ones(dim, DType::F32, x.device())?,
            Tensor::zeros(dim, DType::F32, x.device())?,
        ),
    };
    let op = FusedLayerNorm { eps: eps as f32 };
    Ok(Some(x.contiguous()?.apply_op3_no_bwd(&mul, &add, &op)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    use crate::layers::kernels::KernelPath;
    use crate::test_util::max_abs_diff as max_err;

    /// The fused CPU path against the candle-op path (run here on bf16 input,
    /// which takes it), on rows with an offset mean so that a one-pass variance
    /// would lose digits.
    #[test]
    fn fused_norms_match_the_reference_formulas() -> Result<()> {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 1.0, (6, 100), &dev)? + 30.0)?;
        let w = Tensor::randn(0f32, 1.0, 100, &dev)?;
        let b = Tensor::randn(0f32, 1.0, 100, &dev)?;
        let shift = Tensor::randn(0f32, 1.0, (1, 100), &dev)?;
        let scale = Tensor::randn(0f32, 1.0, (1, 100), &dev)?;

        let mean = x.mean_keepdim(D::Minus1)?;
        let c = x.broadcast_sub(&mean)?;
        let ln = c.broadcast_div(&(c.sqr()?.mean_keepdim(D::Minus1)? + 1e-6)?.sqrt()?)?;
        assert!(max_err(&layer_norm(&x, 1e-6)?, &ln)? < 1e-4);
        let affine = ln.broadcast_mul(&w)?.broadcast_add(&b)?;
        assert!(max_err(&layer_norm_affine(&x, &w, &b, 1e-6)?, &affine)? < 1e-4);
        let modulated = ln.broadcast_mul(&(&scale + 1.0)?)?.broadcast_add(&shift)?;
        assert!(max_err(&layer_norm_modulate(&x, &shift, &scale, 1e-6)?, &modulated)? < 1e-4);
        let rms = x
            .broadcast_div(&(x.sqr()?.mean_keepdim(D::Minus1)? + 1e-6)?.sqrt()?)?
            .broadcast_mul(&w)?;
        assert!(max_err(&rms_norm(&x, &w, 1e-6)?, &rms)? < 1e-5);

        // the candle-op path, through bf16 input, agrees within bf16 rounding
        // (the offset taken off first: bf16 keeps too few digits at 30)
        let xb = (&x - 30.0)?.to_dtype(DType::BF16)?;
        let out = layer_norm_modulate(
            &xb,
            &shift.to_dtype(DType::BF16)?,
            &scale.to_dtype(DType::BF16)?,
            1e-6,
        )?;
        assert_eq!(out.dtype(), DType::BF16);
        assert!(max_err(&out, &modulated)? < 0.1);
        Ok(())
    }

    #[test]
    fn layer_norm_has_zero_mean_unit_variance() -> Result<()> {
        let x = Tensor::new(&[[1f32, 2., 3., 4.], [10., 10., 10., 14.]], &Device::Cpu)?;
        let y = layer_norm(&x, 1e-6)?;
        let mean = y.mean_keepdim(1)?.flatten_all()?.to_vec1::<f32>()?;
        let var = y.sqr()?.mean_keepdim(1)?.flatten_all()?.to_vec1::<f32>()?;
        for (m, v) in mean.iter().zip(var) {
            assert!(m.abs() < 1e-5 && (v - 1.0).abs() < 1e-4, "{m} {v}");
        }
        Ok(())
    }

    #[test]
    fn rms_norm_matches_definition() -> Result<()> {
        let x = Tensor::new(&[[3f32, 4.]], &Device::Cpu)?;
        let w = Tensor::new(&[2f32, 1.], &Device::Cpu)?;
        let y = rms_norm(&x, &w, 0.0)?.to_vec2::<f32>()?;
        let rms = (12.5f32).sqrt();
        assert!((y[0][0] - 6.0 / rms).abs() < 1e-6 && (y[0][1] - 4.0 / rms).abs() < 1e-6);
        Ok(())
    }

    /// The channel norm on the fast path (f32) and the candle-op path (forced
    /// portable) against its definition, on several images, with and without SiLU;
    /// an all-zero pixel stays zero.
    #[test]
    fn channel_rms_norm_matches_its_definition_on_both_paths() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[3f32, 4.], &dev)?.reshape((1, 2, 1, 1))?;
        let g = Tensor::ones((2, 1, 1, 1), DType::F32, &dev)?;
        let silu = |v: f32| v / (1.0 + (-v).exp());
        let s = 2f32.sqrt();
        for path in [KernelPath::Fast, KernelPath::Portable] {
            kernels::run_with(path, || -> Result<()> {
                let y = channel_rms_norm(&x, &g, true)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                assert!((y[0] - silu(0.6 * s)).abs() < 1e-6, "{path:?} {y:?}");
                assert!((y[1] - silu(0.8 * s)).abs() < 1e-6, "{path:?} {y:?}");
                let zero = channel_rms_norm(&x.zeros_like()?, &g, true)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                assert!(zero.iter().all(|v| *v == 0.0));
                Ok(())
            })?;
        }
        // many pixels (more than one block of the norms pass), 3 images, 5 channels
        let x = Tensor::randn(0f32, 2.0, (3, 5, 50, 97), &dev)?;
        let g = Tensor::randn(1f32, 0.1, 5, &dev)?;
        let reference = {
            let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?;
            (x.broadcast_div(&norm)? * 5f64.sqrt())?.broadcast_mul(&g.reshape((1, 5, 1, 1))?)?
        };
        for silu in [false, true] {
            let want = if silu {
                reference.silu()?
            } else {
                reference.clone()
            };
            let fast = channel_rms_norm(&x, &g, silu)?;
            let portable =
                kernels::run_with(KernelPath::Portable, || channel_rms_norm(&x, &g, silu))?;
            assert!(max_err(&fast, &want)? < 1e-5);
            assert!(max_err(&portable, &want)? < 1e-5);
        }
        assert!(channel_rms_norm(&x, &Tensor::ones(4, DType::F32, &dev)?, false).is_err());
        Ok(())
    }

    #[test]
    fn rejects_parameters_of_the_wrong_size() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 8), DType::F32, &dev)?;
        let w = Tensor::zeros(7, DType::F32, &dev)?;
        assert!(rms_norm(&x, &w, 1e-6).is_err());
        assert!(layer_norm_affine(&x, &w, &w, 1e-6).is_err());
        Ok(())
    }
}
