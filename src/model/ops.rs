//! Small numerical building blocks shared by the model components. Every op here
//! is a plain candle op, so it runs on every candle device; `Linear::forward_gelu`
//! adds the fused CPU activation of `model::activation` beside its candle ops.

use candle_core::{D, Module, Result, Tensor};

/// Number of `<prefix>N.*` entries in a checkpoint's tensor names: one more than
/// the largest index N found (0 when there is none).
pub(crate) fn indexed_count(names: &[String], prefix: &str) -> usize {
    names
        .iter()
        .filter_map(|n| {
            n.strip_prefix(prefix)?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .map(|i| i + 1)
        .max()
        .unwrap_or(0)
}

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
        let y = super::profile::matmul(&x.reshape((rows, in_dim))?, &self.weight_t)?;
        let mut out_dims = dims.to_vec();
        out_dims[dims.len() - 1] = self.weight_t.dim(1)?;
        Ok((y, out_dims))
    }

    /// `gelu_tanh(x W^T + b)`, the bias and activation fused on the CPU.
    pub(crate) fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        let (y, out_dims) = self.product(x)?;
        super::activation::bias_gelu_in_place(y, self.bias.as_ref())?.reshape(out_dims)
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

/// Replicate-pads the last two dimensions of a 4-D tensor by `pad` on each side.
pub(crate) fn pad_replicate_hw(x: &Tensor, pad: usize) -> Result<Tensor> {
    if pad == 0 {
        return Ok(x.clone());
    }
    x.pad_with_same(2, pad, pad)?.pad_with_same(3, pad, pad)
}

/// Multi-head scaled dot-product attention over `[heads, len, head_dim]` tensors,
/// softmax in f32.
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let head_dim = q.dim(D::Minus1)?;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let scores = super::profile::matmul(&(q * scale)?, &k.t()?)?;
    let probs = super::softmax::softmax_last_dim_in_place(scores)?.to_dtype(v.dtype())?;
    super::profile::matmul(&probs, v)
}

/// Splits `[len, heads * head_dim]` into `[heads, len, head_dim]`.
pub(crate) fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (len, dim) = x.dims2()?;
    x.reshape((len, heads, dim / heads))?
        .transpose(0, 1)?
        .contiguous()
}

/// Inverse of [`split_heads`].
pub(crate) fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (heads, len, head_dim) = x.dims3()?;
    x.transpose(0, 1)?.reshape((len, heads * head_dim))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn counts_indexed_tensors() {
        let names: Vec<String> = ["blocks.0.a", "blocks.11.b", "blocks.x.c", "head.w"]
            .map(String::from)
            .to_vec();
        assert_eq!(indexed_count(&names, "blocks."), 12);
        assert_eq!(indexed_count(&names, "linear_layers."), 0);
    }

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

    #[test]
    fn replicate_padding_copies_edges() -> Result<()> {
        let x = Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu)?.reshape((1, 1, 2, 2))?;
        let y = pad_replicate_hw(&x, 1)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(
            y,
            vec![
                1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.
            ]
        );
        Ok(())
    }
}
