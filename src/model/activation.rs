//! The feed-forward activation: bias add and tanh-approximated GELU in one pass.
//!
//! On `[tokens, ffn_dim]` (2048 x 8960 per 512x512 chunk) candle's GELU calls a
//! scalar `tanh` per element and the bias add is a pass of its own; together
//! they cost a tenth of a DiT block. On the CPU both are done here in one
//! vectorised pass over the matmul result, in place. Other devices use candle's
//! ops.

use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Result, Tensor};
use rayon::prelude::*;

use super::fast_math::{self, simd_kernel};

/// `gelu_tanh(x + bias)` with `bias` `[features]` added along the last dimension.
/// On the CPU, for a contiguous f32 `x`, `x`'s storage is overwritten: only for
/// tensors nothing else reads, such as a matmul result just computed.
pub(crate) fn bias_gelu_in_place(x: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let features = x.dims().last().copied().unwrap_or(0);
    let fast = x.device().is_cpu() && x.dtype() == DType::F32 && x.is_contiguous();
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

struct BiasGelu;

impl InplaceOp2 for BiasGelu {
    fn name(&self) -> &'static str {
        "bias-gelu-in-place"
    }

    fn cpu_fwd(
        &self,
        x: &mut CpuStorage,
        x_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<()> {
        let (CpuStorage::F32(x), CpuStorage::F32(bias)) = (x, bias) else {
            candle_core::bail!("bias gelu: f32 only")
        };
        let (Some((x0, x1)), Some((b0, b1))) = (
            x_layout.contiguous_offsets(),
            bias_layout.contiguous_offsets(),
        ) else {
            candle_core::bail!("bias gelu: operands must be contiguous")
        };
        let bias = &bias[b0..b1];
        let features = bias.len().max(1);
        if (x1 - x0) % features != 0 {
            candle_core::bail!("bias gelu: {} values for {features} features", x1 - x0)
        }
        x[x0..x1]
            .par_chunks_mut(features)
            .with_min_len((4096 / features).max(1))
            .for_each(|row| bias_gelu_row(row, bias));
        Ok(())
    }
}

simd_kernel! {
    fn bias_gelu_row(row: &mut [f32], bias: &[f32]) {
        for (v, &b) in row.iter_mut().zip(bias) {
            *v = fast_math::gelu_tanh(*v + b);
        }
    }
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
