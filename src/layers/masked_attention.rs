//! The portable path of block-sparse attention: every query window against
//! every key window, with the block mask applied as an additive bias, all
//! heads at once and in chunks of query windows (docs/device-path.md, section
//! "Self-attention").
//!
//! The mask never leaves the device and no loop runs per head or per query
//! window: a few kernels per chunk, each over all heads. Masked blocks cost
//! their products (the work is that of dense attention), which buys a fixed,
//! short list of launches and no copy to the host.

use candle_core::{DType, Result, Tensor};

use super::{shape_log, softmax};

/// Tokens per attention window: 2 frames x 8 rows x 8 columns (the block the
/// mask keeps or drops; `sparse_attention` re-exports it).
pub const WINDOW_TOKENS: usize = 128;

/// Bytes the f32 scores of one chunk may take. The chunk's peak is about twice
/// this: the biased scores and their softmax are alive together.
pub const SCORE_BUDGET_BYTES: usize = 512 << 20;

/// Bias of a masked block: far enough below any score that its exp is zero,
/// finite so that a row with every block masked stays a number (it is zeroed
/// afterwards).
pub(crate) const MASKED_BIAS: f64 = -1e30;

/// The sizes of a block-sparse attention's operands.
pub(crate) struct WindowShape {
    pub heads: usize,
    /// Query windows.
    pub nq: usize,
    /// Tokens per window.
    pub wt: usize,
    /// Head width.
    pub d: usize,
    /// Key windows.
    pub nk: usize,
}

impl WindowShape {
    /// The sizes of `q_win` `[heads, nq, wt, d]` and `k_win` `[heads, nk, ..]`,
    /// with `mask` checked to be `[heads, nq, nk]`; `op` names the caller in
    /// the error.
    pub fn of(op: &str, q_win: &Tensor, k_win: &Tensor, mask: &Tensor) -> Result<Self> {
        let (heads, nq, wt, d) = q_win.dims4()?;
        let nk = k_win.dim(1)?;
        if mask.dims() != [heads, nq, nk] {
            candle_core::bail!(
                "{op}: mask has shape {:?}, expected [{heads}, {nq}, {nk}] \
                 (heads, query windows, key windows)",
                mask.dims()
            )
        }
        Ok(Self {
            heads,
            nq,
            wt,
            d,
            nk,
        })
    }
}

/// Query windows per chunk so that the f32 scores
/// `[heads, windows x 128, key_windows x 128]` fit in `budget_bytes`; at
/// least one.
pub fn query_windows_per_chunk(heads: usize, key_windows: usize, budget_bytes: usize) -> usize {
    let per_window =
        heads * WINDOW_TOKENS * key_windows * WINDOW_TOKENS * DType::F32.size_in_bytes();
    (budget_bytes / per_window.max(1)).max(1)
}

/// Attention of `q_win` `[heads, nq, 128, d]` over the key windows that `mask`
/// `[heads, nq, nk]` (nonzero = attend) allows in `k_win` / `v_win`
/// `[heads, nk, 128, d]`, softmax scale 1/sqrt(d), scores and softmax in f32.
/// A query window with no allowed key window gets zeros.
pub fn masked_attention(
    q_win: &Tensor,
    k_win: &Tensor,
    v_win: &Tensor,
    mask: &Tensor,
) -> Result<Tensor> {
    masked_attention_within(q_win, k_win, v_win, mask, SCORE_BUDGET_BYTES)
}

/// [`masked_attention`] with the scores of one chunk bounded by `budget_bytes`.
pub(crate) fn masked_attention_within(
    q_win: &Tensor,
    k_win: &Tensor,
    v_win: &Tensor,
    mask: &Tensor,
    budget_bytes: usize,
) -> Result<Tensor> {
    let WindowShape {
        heads,
        nq,
        wt,
        d,
        nk,
    } = WindowShape::of("masked_attention", q_win, k_win, mask)?;
    // Scaling the queries is cheaper than scaling the scores.
    let q = (q_win / (d as f64).sqrt())?;
    let k = k_win.reshape((heads, nk * wt, d))?.contiguous()?;
    let v = v_win.reshape((heads, nk * wt, d))?.contiguous()?;
    let k_t = k.t()?;
    let allowed = mask.to_dtype(DType::F32)?;
    // 0 where a block is kept, MASKED_BIAS where it is not; broadcast over the
    // 128 x 128 tokens of the block pair.
    let bias = allowed
        .affine(-MASKED_BIAS, MASKED_BIAS)?
        .reshape((heads, nq, 1, nk, 1))?;
    // 1 for a query window that keeps a key window, 0 for one that keeps none.
    let live = allowed
        .max_keepdim(2)?
        .reshape((heads, nq, 1, 1))?
        .to_dtype(v.dtype())?;
    let per_chunk = query_windows_per_chunk(heads, nk, budget_bytes);
    let mut outputs = Vec::with_capacity(nq.div_ceil(per_chunk));
    for start in (0..nq).step_by(per_chunk) {
        let n = per_chunk.min(nq - start);
        // A copy: the narrowed windows of all heads are not one block.
        let q_chunk = q.narrow(1, start, n)?.reshape((heads, n * wt, d))?;
        let biased = {
            let scores = shape_log::matmul_named("masked_attention.scores", &q_chunk, &k_t)?
                .to_dtype(DType::F32)?;
            scores
                .reshape((heads, n, wt, nk, wt))?
                .broadcast_add(&bias.narrow(1, start, n)?)?
                .reshape((heads, n * wt, nk * wt))?
        };
        let probs = softmax::softmax_last_dim_in_place(biased)?.to_dtype(v.dtype())?;
        let out = shape_log::matmul_named("masked_attention.values", &probs, &v)?
            .reshape((heads, n, wt, d))?;
        outputs.push(out.broadcast_mul(&live.narrow(1, start, n)?)?);
    }
    Tensor::cat(&outputs, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::kernels::{KernelPath, run_with};
    use crate::layers::sparse_attention::dense_masked_attention;
    use candle_core::Device;

    fn inputs(heads: usize, nq: usize, nk: usize, d: usize) -> Result<(Tensor, Tensor, Tensor)> {
        let dev = Device::Cpu;
        Ok((
            Tensor::randn(0f32, 1.0, (heads, nq, 128, d), &dev)?,
            Tensor::randn(0f32, 1.0, (heads, nk, 128, d), &dev)?,
            Tensor::randn(0f32, 1.0, (heads, nk, 128, d), &dev)?,
        ))
    }

    #[test]
    fn chunk_size_follows_the_budget() {
        // 12 heads x 405 key windows: 318,504,960 bytes per query window
        assert_eq!(query_windows_per_chunk(12, 405, SCORE_BUDGET_BYTES), 1);
        assert_eq!(
            query_windows_per_chunk(2, 18, 4 * 2 * 128 * 18 * 128 * 4),
            4
        );
        assert_eq!(query_windows_per_chunk(2, 18, 1), 1);
    }

    /// Any chunking gives the dense masked reference, with a query window that
    /// keeps nothing at zero; the products' operands pass CUDA's rules.
    #[test]
    fn matches_dense_masked_reference_in_any_chunking() -> Result<()> {
        let (heads, nq, nk, d) = (3, 7, 5, 8);
        let (q, k, v) = inputs(heads, nq, nk, d)?;
        let mut bits: Vec<u8> = (0..heads * nq * nk)
            .map(|i| ((i * 7 + i / 3) % 3 != 0) as u8)
            .collect();
        bits[nk..2 * nk].fill(0);
        let mask = Tensor::from_vec(bits, (heads, nq, nk), &Device::Cpu)?;
        let want = dense_masked_attention(&q, &k, &v, &mask)?;
        let per_window = heads * 128 * nk * 128 * 4;
        for windows in [1, 3, nq] {
            let got = run_with(KernelPath::Portable, || {
                masked_attention_within(&q, &k, &v, &mask, windows * per_window)
            })?;
            let err = (&got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(err < 1e-5, "{windows} windows per chunk: max error {err}");
            let empty = got.get(0)?.get(1)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(empty, 0.0);
        }
        Ok(())
    }

    #[test]
    fn half_precision_and_a_wrong_mask() -> Result<()> {
        let (q, k, v) = inputs(2, 3, 4, 8)?;
        let mask = Tensor::ones((2, 3, 4), DType::U8, &Device::Cpu)?;
        let want = masked_attention(&q, &k, &v, &mask)?;
        let [qh, kh, vh] = [&q, &k, &v].map(|t| t.to_dtype(DType::BF16));
        let got = masked_attention(&qh?, &kh?, &vh?, &mask)?;
        assert_eq!(got.dtype(), DType::BF16);
        let err = (got.to_dtype(DType::F32)? - want)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(err < 0.05, "{err}");
        let wrong = Tensor::ones((2, 4, 3), DType::U8, &Device::Cpu)?;
        let err = masked_attention(&q, &k, &v, &wrong).expect_err("wrong mask accepted");
        assert!(err.to_string().contains("[2, 4, 3]"), "{err}");
        Ok(())
    }
}
