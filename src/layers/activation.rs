//! The feed-forward activation: bias add and tanh-approximated GELU in one pass.
//!
//! On `[tokens, ffn_dim]` (2048 x 8960 per 512x512 chunk) candle's GELU calls a
//! scalar `tanh` per element and the bias add is a pass of its own; together
//! they cost a tenth of a DiT block. On the CPU both are done here in one
//! vectorised pass over the matmul result, in place. Other devices use candle's
//! ops.

use candle_core::{DType, Result, Tensor};

use super::cpu::gelu::BiasGelu;
use super::kernels;

/// `gelu_tanh(x + bias)` with `bias` `[features]` added along the last dimension.
/// On the CPU, for a contiguous f32 `x`, `x`'s storage is overwritten: only for
/// tensors nothing else reads, such as a matmul result just computed.
pub(crate) fn bias_gelu_in_place(x: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let features = x.dims().last().copied().unwrap_or(0);
    let fast = kernels::cpu_fast_path(&x) && x.is_contiguous();
    if !fast {
        let x = match bias {
            Some(b) => x.broadcast_add(b)?,
            None => x,
        };
        return x.gelu();
    }
    let bias = match bias {
        Some(b) if b.dims() == [features] => b.to_dtype(DType::F32)?.contiguous()?,
        Some(b) => candle_core::bail!("bias of shape {:?} for {features} features", b.dims()),
        None => Tensor::zeros(features, DType::F32, x.device())?,
    };
    x.inplace_op2(&bias, &BiasGelu)?;
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_candle_bias_and_gelu() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 3.0, (37, 70), &dev)?;
        let b = Tensor::randn(0f32, 1.0, 70, &dev)?;
        let want = x.broadcast_add(&b)?.gelu()?;
        let got = bias_gelu_in_place(x.copy()?, Some(&b))?;
        let err = (got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 1e-5, "{err}");
        let got = bias_gelu_in_place(x.copy()?, None)?;
        let err = (got - x.gelu()?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 1e-5, "{err}");
        // strided and half-precision inputs take candle's ops
        let got = bias_gelu_in_place(x.t()?, None)?;
        let err = (got - x.t()?.gelu()?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(err, 0.0);
        Ok(())
    }

    #[test]
    fn rejects_a_bias_of_the_wrong_size() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 5), DType::F32, &dev)?;
        assert!(bias_gelu_in_place(x, Some(&Tensor::zeros(4, DType::F32, &dev)?)).is_err());
        Ok(())
    }
}
