//! The linear layer of every projection in the model. Plain candle ops, so it
//! runs on every candle device; `forward_gelu` adds the fused CPU activation of
//! `layers::activation` beside them.

use candle_core::{Module, Result, Tensor};

use super::{activation, shape_log};

/// A linear layer `x W^T + b` that accepts inputs of any rank.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    weight_t: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub(crate) fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        // Transposed once at load so that every forward is a plain matmul.
        Ok(Self {
            weight_t: weight.t()?.contiguous()?,
            bias,
        })
    }

    pub(crate) fn load(
        vb: &candle_nn::VarBuilder,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Self::new(weight, bias)
    }
}

impl Linear {
    /// `x W^T` as `[rows, out]`, and the output shape for `x`'s leading dims.
    fn product(&self, x: &Tensor) -> Result<(Tensor, Vec<usize>)> {
        let dims = x.dims();
        let in_dim = dims[dims.len() - 1];
        let rows = x.elem_count() / in_dim.max(1);
        // Inputs from f32-only stages (e.g. CPU convolutions) meet half-precision weights.
        let x = x.to_dtype(self.weight_t.dtype())?;
        let y = shape_log::matmul(&x.reshape((rows, in_dim))?, &self.weight_t)?;
        let mut out_dims = dims.to_vec();
        out_dims[dims.len() - 1] = self.weight_t.dim(1)?;
        Ok((y, out_dims))
    }

    /// `gelu_tanh(x W^T + b)`, the bias and activation fused on the CPU.
    pub(crate) fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        let (y, out_dims) = self.product(x)?;
        activation::bias_gelu_in_place(y, self.bias.as_ref())?.reshape(out_dims)
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (y, out_dims) = self.product(x)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        y.reshape(out_dims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn linear_keeps_leading_dims() -> Result<()> {
        let w = Tensor::new(&[[1f32, 0.], [0., 2.], [1., 1.]], &Device::Cpu)?;
        let b = Tensor::new(&[0f32, 0., 1.], &Device::Cpu)?;
        let lin = Linear::new(w, Some(b))?;
        let x = Tensor::new(&[[[1f32, 2.]]], &Device::Cpu)?;
        let y = lin.forward(&x)?;
        assert_eq!(y.dims(), &[1, 1, 3]);
        assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, vec![1., 4., 4.]);
        Ok(())
    }
}
