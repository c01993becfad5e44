//! Plain multi-head attention (the DiT's cross-attention over the prompt) and the
//! head split / merge around it.

use candle_core::{D, Result, Tensor};

use super::{shape_log, softmax};

/// Multi-head scaled dot-product attention over `[heads, len, head_dim]` tensors,
/// softmax in f32.
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let head_dim = q.dim(D::Minus1)?;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let scores = shape_log::matmul(&(q * scale)?, &k.t()?)?;
    let probs = softmax::softmax_last_dim_in_place(scores)?.to_dtype(v.dtype())?;
    shape_log::matmul(&probs, v)
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
