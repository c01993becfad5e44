//! The DiT's residual connections: `x + branch * gate` (the adaLN gate) and
//! `x + branch`. On the CPU, for an f32 branch just computed, in one pass in
//! place (`cpu::residual`); other devices use candle's ops.

use candle_core::{DType, Result, Tensor};

use super::cpu::residual::GatedResidual;
use super::kernels;

/// `x + branch * gate`, `gate` `[features]` or `[1, features]` along the last
/// dimension. On the CPU, for contiguous f32 operands, `branch`'s storage is
/// overwritten: only for tensors nothing else reads, such as a layer's output
/// just computed.
pub(crate) fn gated_in_place(x: &Tensor, branch: Tensor, gate: &Tensor) -> Result<Tensor> {
    let features = branch.dims().last().copied().unwrap_or(0);
    let fast = kernels::cpu_fast_path(&branch)
        && branch.is_contiguous()
        && x.dtype() == DType::F32
        && x.dims() == branch.dims()
        && gate.elem_count() == features;
    if !fast {
        return x + branch.broadcast_mul(gate)?;
    }
    let gate = gate.to_dtype(DType::F32)?.flatten_all()?.contiguous()?;
    branch.inplace_op3(&x.contiguous()?, &gate, &GatedResidual)?;
    Ok(branch)
}

/// `x + branch`, in place in `branch` on the CPU as [`gated_in_place`].
pub(crate) fn add_in_place(x: &Tensor, branch: Tensor) -> Result<Tensor> {
    let features = branch.dims().last().copied().unwrap_or(0);
    if !kernels::cpu_fast_path(&branch) {
        return x + branch;
    }
    let ones = Tensor::ones(features, DType::F32, branch.device())?;
    gated_in_place(x, branch, &ones)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn match_candle_ops() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (37, 70), &dev)?;
        let y = Tensor::randn(0f32, 1.0, (37, 70), &dev)?;
        let gate = Tensor::randn(0f32, 1.0, (1, 70), &dev)?;
        let want = (&x + y.broadcast_mul(&gate)?)?;
        let got = gated_in_place(&x, y.copy()?, &gate)?;
        assert_eq!((got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        let got = add_in_place(&x, y.copy()?)?;
        assert_eq!(
            (got - (&x + &y)?)?.abs()?.max_all()?.to_scalar::<f32>()?,
            0.0
        );
        // a strided branch takes candle's ops, and is left alone
        let yt = y.t()?.contiguous()?.t()?;
        let got = gated_in_place(&x, yt.clone(), &gate)?;
        assert_eq!((got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        assert_eq!((yt - &y)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }
}
