//! The gathered portable path of block-sparse attention: each query window
//! attends to a copy of only the key windows its mask keeps, gathered on the
//! device, in batched products (docs/device-path.md, section
//! "Self-attention").
//!
//! The kept key windows of every (head, query window) row are listed by one
//! descending `arg_sort` of the mask row (kept windows first, in key order),
//! cut to the largest count of any row; rows that keep fewer windows fill the
//! rest of their list with windows they do not keep, which a bias of
//! [`MASKED_BIAS`] removes from the softmax. The work is that of the widest
//! row, not of every key window as on the masked path, and all of it runs in
//! a fixed list of launches per chunk of query windows. One scalar (the
//! widest row's count) is read back to size the lists.

use candle_core::{D, DType, Result, Tensor};

use super::device_rules::{self, MAX_SORT_COLUMNS};
use super::masked_attention::{MASKED_BIAS, SCORE_BUDGET_BYTES, WINDOW_TOKENS};
use super::{shape_log, softmax};

/// The kept key windows of every row of `mask` `[heads, nq, nk]` as indices
/// into the flattened `[heads * nk]` key windows, `[heads, nq, width]` u32,
/// with the bias `[heads, nq, width]` f32 (0 where the listed window is kept,
/// [`MASKED_BIAS`] where it only fills the list), `width` the largest count
/// of any row. `None` when no row keeps anything.
pub fn kept_key_windows(mask: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
    let (heads, _, nk) = mask.dims3()?;
    if nk > MAX_SORT_COLUMNS {
        candle_core::bail!(
            "gathered attention: {nk} key windows exceed the {MAX_SORT_COLUMNS} \
             columns CUDA's sort can order"
        )
    }
    let device = mask.device();
    let kept = mask.ne(0u8)?.to_dtype(DType::F32)?;
    let width = kept.sum(D::Minus1)?.max_all()?.to_scalar::<f32>()? as usize;
    if width == 0 {
        return Ok(None);
    }
    // Kept windows rank above the others, earlier windows above later ones:
    // a descending sort lists the kept windows first, in key order.
    let order = Tensor::arange(0f32, nk as f32, device)?;
    let rank = kept.affine(nk as f64, 0.0)?.broadcast_sub(&order)?;
    device_rules::check_contiguous("kept_key_windows.arg_sort", &rank)?;
    let listed = rank.arg_sort_last_dim(false)?.narrow(2, 0, width)?;
    let listed = listed.contiguous()?;
    let bias = kept.gather(&listed, 2)?.affine(-MASKED_BIAS, MASKED_BIAS)?;
    let head_start = Tensor::arange(0u32, heads as u32, device)?
        .affine(nk as f64, 0.0)?
        .reshape((heads, 1, 1))?;
    let global = listed.broadcast_add(&head_start)?;
    Ok(Some((global, bias)))
}

/// Query windows per chunk so that the f32 scores `[heads, n x 128,
/// width x 128]` and the gathered keys and values fit in `budget_bytes`; at
/// least one.
pub fn query_windows_per_chunk(
    heads: usize,
    width: usize,
    head_dim: usize,
    value_bytes: usize,
    budget_bytes: usize,
) -> usize {
    let scores = heads * WINDOW_TOKENS * width * WINDOW_TOKENS * DType::F32.size_in_bytes();
    let gathered = 2 * heads * width * WINDOW_TOKENS * head_dim * value_bytes;
    (budget_bytes / (scores + gathered).max(1)).max(1)
}

/// Attention of `q_win` `[heads, nq, 128, d]` over the key windows that
/// `mask` `[heads, nq, nk]` (nonzero = attend) allows in `k_win` / `v_win`
/// `[heads, nk, 128, d]`, softmax scale 1/sqrt(d), scores and softmax in f32.
/// A query window with no allowed key window gets zeros.
pub fn gathered_attention(
    q_win: &Tensor,
    k_win: &Tensor,
    v_win: &Tensor,
    mask: &Tensor,
) -> Result<Tensor> {
    gathered_attention_within(q_win, k_win, v_win, mask, SCORE_BUDGET_BYTES)
}

/// [`gathered_attention`] with one chunk's scores and gathered windows bounded
/// by `budget_bytes`.
pub(crate) fn gathered_attention_within(
    q_win: &Tensor,
    k_win: &Tensor,
    v_win: &Tensor,
    mask: &Tensor,
    budget_bytes: usize,
) -> Result<Tensor> {
    let (heads, nq, wt, d) = q_win.dims4()?;
    let nk = k_win.dim(1)?;
    if mask.dims() != [heads, nq, nk] {
        candle_core::bail!(
            "gathered_attention: mask has shape {:?}, expected [{heads}, {nq}, {nk}] \
             (heads, query windows, key windows)",
            mask.dims()
        )
    }
    let Some((listed, bias)) = kept_key_windows(mask)? else {
        return q_win.zeros_like();
    };
    let width = listed.dim(2)?;
    // Scaling the queries is cheaper than scaling the scores.
    let q = (q_win / (d as f64).sqrt())?;
    let k = k_win.reshape((heads * nk, wt * d))?;
    let v = v_win.reshape((heads * nk, wt * d))?;
    let live = mask
        .ne(0u8)?
        .max_keepdim(D::Minus1)?
        .to_dtype(q.dtype())?
        .reshape((heads, nq, 1, 1))?;
    let per_chunk =
        query_windows_per_chunk(heads, width, d, q.dtype().size_in_bytes(), budget_bytes);
    let mut outputs = Vec::with_capacity(nq.div_ceil(per_chunk));
    for start in (0..nq).step_by(per_chunk) {
        let n = per_chunk.min(nq - start);
        let rows = heads * n;
        let ids = listed.narrow(1, start, n)?.flatten_all()?;
        let keys = k.index_select(&ids, 0)?.reshape((rows, width * wt, d))?;
        let values = v.index_select(&ids, 0)?.reshape((rows, width * wt, d))?;
        let q_chunk = q.narrow(1, start, n)?.reshape((rows, wt, d))?;
        // One bias per key token, shared by the window's 128 query rows.
        let token_bias = bias
            .narrow(1, start, n)?
            .reshape((rows, width, 1))?
            .broadcast_as((rows, width, wt))?
            .reshape((rows, 1, width * wt))?;
        let scores = shape_log::matmul_named("gathered_attention.scores", &q_chunk, &keys.t()?)?
            .to_dtype(DType::F32)?
            .broadcast_add(&token_bias)?;
        let probs = softmax::softmax_last_dim_in_place(scores)?.to_dtype(values.dtype())?;
        let out = shape_log::matmul_named("gathered_attention.values", &probs, &values)?
            .reshape((heads, n, wt, d))?;
        outputs.push(out.broadcast_mul(&live.narrow(1, start, n)?)?);
    }
    Tensor::cat(&outputs, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::kernels::{KernelPath, run_with};
    use crate::layers::sparse_attention::{
        SparseConfig, TokenGrid, block_mask, dense_masked_attention, local_bias,
    };
    use candle_core::Device;

    fn max_error(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()
    }

    /// Rows keeping different numbers of windows (the others padded), one
    /// keeping none (zeros), in any chunking: the dense masked reference.
    #[test]
    fn matches_dense_masked_reference_in_any_chunking() -> Result<()> {
        let dev = Device::Cpu;
        let (heads, nq, nk, d) = (3, 7, 6, 16);
        let q = Tensor::randn(0f32, 1.0, (heads, nq, 128, d), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (heads, nk, 128, d), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (heads, nk, 128, d), &dev)?;
        let mut bits: Vec<u8> = (0..heads * nq * nk)
            .map(|i| ((i * 7 + i / 3) % 4 != 0) as u8)
            .collect();
        bits[nk..2 * nk].fill(0);
        bits[2 * nk..3 * nk].fill(1);
        let mask = Tensor::from_vec(bits, (heads, nq, nk), &dev)?;
        let want = dense_masked_attention(&q, &k, &v, &mask)?;
        for windows in [1, 2, nq] {
            let budget = windows * (heads * 128 * nk * 128 * 4 + 2 * heads * nk * 128 * d * 4);
            let got = run_with(KernelPath::Portable, || {
                gathered_attention_within(&q, &k, &v, &mask, budget)
            })?;
            let err = max_error(&got, &want)?;
            assert!(err < 1e-5, "{windows} windows per chunk: max error {err}");
            assert_eq!(
                got.get(0)?.get(1)?.abs()?.max_all()?.to_scalar::<f32>()?,
                0.0
            );
        }
        // nothing kept anywhere: zeros
        let none = mask.zeros_like()?;
        let got = gathered_attention(&q, &k, &v, &none)?;
        assert_eq!(got.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }

    #[test]
    fn the_list_holds_the_kept_windows_in_order_then_padding() -> Result<()> {
        let mask = Tensor::new(
            &[[[0u8, 1, 0, 1], [1, 1, 1, 0]], [[0, 0, 0, 0], [0, 0, 1, 0]]],
            &Device::Cpu,
        )?;
        let (listed, bias) = kept_key_windows(&mask)?.expect("something is kept");
        let listed = listed.to_vec3::<u32>()?;
        // three wide (the widest row); head 1 starts at key window 4
        assert_eq!(listed[0][0][..2], [1, 3]);
        assert_eq!(listed[0][1], [0, 1, 2]);
        assert_eq!(listed[1][1][0], 4 + 2);
        let kept: Vec<Vec<Vec<bool>>> = bias
            .to_vec3::<f32>()?
            .into_iter()
            .map(|h| {
                h.into_iter()
                    .map(|r| r.into_iter().map(|b| b == 0.0).collect())
                    .collect()
            })
            .collect();
        assert_eq!(kept[0], [vec![true, true, false], vec![true, true, true]]);
        assert_eq!(
            kept[1],
            [vec![false, false, false], vec![true, false, false]]
        );
        Ok(())
    }

    /// The masks of the released settings (sparse-ratio 2, local-range 11,
    /// kv-ratio 3: a steady chunk's cache and own windows, 4 time windows) at
    /// 1408x768 and 1920x1088 (padded to 1920x1152), at the released head
    /// width, on a slice of query windows spread over the frame; f32.
    #[test]
    fn matches_dense_reference_at_released_geometries() -> Result<()> {
        let dev = Device::Cpu;
        let d = 128;
        for (height, width) in [(768usize, 1408usize), (1152, 1920)] {
            let grid = TokenGrid {
                frames: 2,
                rows: height / 16,
                cols: width / 16,
            };
            let nb = grid.blocks_per_time_window();
            let sparse = SparseConfig::new(2.0, 3.0, 11, height, width);
            let nk = (sparse.kv_time_windows + 1) * nb;
            let q = Tensor::randn(0f32, 1.0, (1, nb, 128, d), &dev)?;
            let k = Tensor::randn(0f32, 1.0, (1, nk, 128, d), &dev)?;
            let v = Tensor::randn(0f32, 1.0, (1, nk, 128, d), &dev)?;
            let bias = local_bias(grid, nb, nk, sparse.local_range, &dev)?;
            let mask = block_mask(&q, &k, &bias, grid, sparse.topk_ratio)?;
            let picked = Tensor::new(&[0u32, (nb / 2) as u32, (nb - 1) as u32], &dev)?;
            let (q, mask) = (q.index_select(&picked, 1)?, mask.index_select(&picked, 1)?);
            let want = dense_masked_attention(&q, &k, &v, &mask)?;
            let got = run_with(KernelPath::Portable, || {
                gathered_attention(&q, &k, &v, &mask)
            })?;
            let err = max_error(&got, &want)?;
            assert!(err < 1e-5, "{width}x{height}: max error {err}");
        }
        Ok(())
    }

    #[test]
    fn half_precision_is_close_and_a_wrong_mask_is_named() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (2, 3, 128, 8), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (2, 4, 128, 8), &dev)?;
        let mask = Tensor::new(&[[[1u8, 0, 1, 0], [0, 1, 1, 1], [1, 1, 1, 1]]; 2], &dev)?;
        let want = dense_masked_attention(&q, &k, &k, &mask)?;
        let [qh, kh] = [&q, &k].map(|t| t.to_dtype(DType::BF16));
        let (qh, kh) = (qh?, kh?);
        let got = gathered_attention(&qh, &kh, &kh, &mask)?;
        assert_eq!(got.dtype(), DType::BF16);
        let err = max_error(&got, &want)?;
        assert!(err < 0.05, "{err}");
        let wrong = Tensor::ones((2, 4, 3), DType::U8, &dev)?;
        let err = gathered_attention(&q, &k, &k, &wrong).expect_err("wrong mask accepted");
        assert!(err.to_string().contains("[2, 4, 3]"), "{err}");
        Ok(())
    }
}
