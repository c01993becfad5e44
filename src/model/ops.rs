//! Small numerical building blocks shared by the model components. Every op here
//! is a plain candle op, so it runs on every candle device.

use candle_core::{D, DType, Module, Result, Tensor};

/// LayerNorm over the last dimension without affine parameters, computed in f32
/// (as the reference does) and returned in the input's dtype.
pub(crate) fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
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
    layer_norm(x, eps)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}

/// Wan's RMSNorm: `x * rsqrt(mean(x^2) + eps)` in f32, cast back, times `weight`.
pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x32 = x.to_dtype(DType::F32)?;
    let ms = x32.sqr()?.mean_keepdim(D::Minus1)?;
    x32.broadcast_div(&(ms + eps)?.sqrt()?)?
        .to_dtype(dtype)?
        .broadcast_mul(weight)
}

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

/// `x * (1 + scale) + shift`, the adaLN modulation.
pub(crate) fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    x.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)
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

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let in_dim = dims[dims.len() - 1];
        let rows = x.elem_count() / in_dim.max(1);
        // Inputs from f32-only stages (e.g. CPU convolutions) meet half-precision weights.
        let x = x.to_dtype(self.weight_t.dtype())?;
        let y = super::profile::matmul(&x.reshape((rows, in_dim))?, &self.weight_t)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims.to_vec();
        out_dims[dims.len() - 1] = self.weight_t.dim(1)?;
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
    let probs = super::softmax::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
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
