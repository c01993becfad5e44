//! Softmax over the last dimension, with a CPU fast path.
//!
//! candle's CPU softmax calls the scalar `exp` per element and writes a new
//! tensor, which made the attention softmax cost a large fraction of the
//! attention products. On the CPU this module uses the vectorised exp of
//! [`fast_math`](super::cpu::fast_math) (accurate to a few f32 ulps) and, for score tensors that nothing
//! else holds, overwrites them in place instead of allocating as much again.
//! Other devices and dtypes use candle's own kernel, on contiguous input (its
//! CUDA kernel reads one contiguous block).

use candle_core::{DType, Result, Tensor};

use super::cpu::softmax::SoftmaxInPlace;
use super::device_rules;
use super::kernels::{self, KernelPath};

/// Softmax over the last dimension, computed in f32 whatever the input dtype.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !(x.device().is_cpu() && kernels::current() == KernelPath::Fast) {
        // candle-nn's CUDA kernel reads its input as one contiguous block.
        let input = x.to_dtype(DType::F32)?.contiguous()?;
        device_rules::check_contiguous("softmax_last_dim", &input)?;
        return candle_nn::ops::softmax_last_dim(&input)?.to_dtype(x.dtype());
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
    if kernels::cpu_fast_path(&scores) && scores.is_contiguous() {
        scores.inplace_op1(&SoftmaxInPlace)?;
        Ok(scores)
    } else {
        softmax_last_dim(&scores)
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

    /// The portable path hands candle-nn contiguous input, as its CUDA kernel
    /// requires (the operand check refuses anything else), strided or not.
    #[test]
    fn portable_path_takes_strided_input() -> Result<()> {
        let x = Tensor::randn(0f32, 3.0, (5, 40), &Device::Cpu)?;
        let want = candle_nn::ops::softmax_last_dim(&x.t()?.contiguous()?)?;
        for input in [x.t()?, x.t()?.to_dtype(DType::BF16)?] {
            let got = kernels::run_with(KernelPath::Portable, || {
                softmax_last_dim_in_place(input.clone())
            })?;
            let err = (got.to_dtype(DType::F32)? - &want)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(err < 1e-2, "{:?}: {err}", input.dtype());
        }
        Ok(())
    }
}
