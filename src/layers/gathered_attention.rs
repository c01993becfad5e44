//! The gathered portable path of block-sparse attention: each query window
//! attends to a copy of only the key windows its mask keeps, gathered on the
//! device, in batched products (docs/device-path.md, section
//! "Self-attention").
//!
//! The kept key windows of every (head, query window) row are listed by one
//! descending `arg_sort` of the mask row (kept windows first, in key order).
//! Each row's count of kept windows is read back (one small vector); the rows
//! then run in order of their counts, in chunks padded only to their widest
//! row ([`RowChunks`]): a row that keeps fewer windows than its chunk's width
//! fills its list with windows it does not keep, which a bias of
//! [`MASKED_BIAS`] removes from the softmax. The work stays close to the kept
//! pairs', not that of every key window as on the masked path, in a fixed list
//! of launches per chunk.

use candle_core::{D, DType, Result, Tensor};

use super::device_rules::{self, MAX_SORT_COLUMNS};
use super::masked_attention::{MASKED_BIAS, SCORE_BUDGET_BYTES, WINDOW_TOKENS, WindowShape};
use super::{shape_log, softmax};

/// How many key windows each (head, query window) row of `mask`
/// `[heads, nq, nk]` keeps, in row order (read back to the host: it sizes and
/// orders the work).
pub fn kept_counts(mask: &Tensor) -> Result<Vec<u32>> {
    mask.ne(0u8)?
        .to_dtype(DType::U32)?
        .sum(D::Minus1)?
        .flatten_all()?
        .to_vec1::<u32>()
}

/// The first `width` listed key windows of every row of `mask`
/// `[heads, nq, nk]`, as indices into the flattened `[heads * nk]` key
/// windows, `[heads * nq, width]` u32: the kept windows in key order, then
/// windows the row does not keep; with the bias `[heads * nq, width]` f32, 0
/// for a kept window and [`MASKED_BIAS`] for the others.
pub fn kept_key_windows(mask: &Tensor, width: usize) -> Result<(Tensor, Tensor)> {
    let (heads, nq, nk) = mask.dims3()?;
    if nk > MAX_SORT_COLUMNS {
        candle_core::bail!(
            "gathered attention: {nk} key windows exceed the {MAX_SORT_COLUMNS} \
             columns CUDA's sort can order"
        )
    }
    let device = mask.device();
    let kept = mask.ne(0u8)?.to_dtype(DType::F32)?;
    // Kept windows rank above the others, earlier windows above later ones:
    // a descending sort lists the kept windows first, in key order.
    let order = Tensor::arange(0f32, nk as f32, device)?;
    let rank = kept.affine(nk as f64, 0.0)?.broadcast_sub(&order)?;
    device_rules::check_contiguous("kept_key_windows.arg_sort", &rank)?;
    let width = width.min(nk);
    let listed = rank
        .arg_sort_last_dim(false)?
        .narrow(2, 0, width)?
        .contiguous()?;
    let bias = kept.gather(&listed, 2)?.affine(-MASKED_BIAS, MASKED_BIAS)?;
    let head_start = Tensor::arange(0u32, heads as u32, device)?
        .affine(nk as f64, 0.0)?
        .reshape((heads, 1, 1))?;
    let global = listed.broadcast_add(&head_start)?;
    Ok((
        global.reshape((heads * nq, width))?,
        bias.reshape((heads * nq, width))?,
    ))
}

/// Rows per chunk of `width` kept windows each so that the chunk's f32 scores
/// `[rows, 128, width x 128]` and gathered keys and values fit in
/// `budget_bytes`; at least one.
pub fn rows_per_chunk(
    width: usize,
    head_dim: usize,
    value_bytes: usize,
    budget_bytes: usize,
) -> usize {
    let scores = WINDOW_TOKENS * width * WINDOW_TOKENS * DType::F32.size_in_bytes();
    let gathered = 2 * width * WINDOW_TOKENS * head_dim * value_bytes;
    (budget_bytes / (scores + gathered).max(1)).max(1)
}

/// How the gathered path runs the rows of a mask: every row in order of its
/// count of kept windows, most first (rows that keep nothing last), and the
/// chunks of that order that run together, each as wide as its first row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowChunks {
    /// Row indices, by descending count.
    pub order: Vec<u32>,
    /// `(first position in order, rows, width)` of each chunk; the rows after
    /// the last chunk keep nothing.
    pub chunks: Vec<(usize, usize, usize)>,
}

impl RowChunks {
    /// The chunks for rows keeping `counts` windows, each chunk's scores and
    /// gathered windows within `budget_bytes` (`rows_per_chunk`).
    pub fn new(counts: &[u32], head_dim: usize, value_bytes: usize, budget_bytes: usize) -> Self {
        let mut order: Vec<u32> = (0..counts.len() as u32).collect();
        order.sort_by_key(|&row| std::cmp::Reverse(counts[row as usize]));
        let live = order
            .iter()
            .filter(|&&row| counts[row as usize] > 0)
            .count();
        let mut chunks = Vec::new();
        let mut start = 0;
        while start < live {
            let width = counts[order[start] as usize] as usize;
            let rows = rows_per_chunk(width, head_dim, value_bytes, budget_bytes).min(live - start);
            chunks.push((start, rows, width));
            start += rows;
        }
        Self { order, chunks }
    }

    /// Rows in the chunks (those that keep a window).
    pub fn live_rows(&self) -> usize {
        self.chunks
            .last()
            .map_or(0, |&(start, rows, _)| start + rows)
    }

    /// Window pairs the chunks compute, padding included.
    pub fn padded_pairs(&self) -> usize {
        self.chunks
            .iter()
            .map(|&(_, rows, width)| rows * width)
            .sum()
    }
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
///
/// The (head, query window) rows run in order of how many windows they keep,
/// most first, in chunks of rows whose lists are cut to the chunk's first
/// (widest) row: a chunk pads its rows only up to that width, so the work
/// stays close to the kept pairs' however unequal the rows are. Rows that
/// keep nothing are zeros; one permutation puts the rows back in order.
pub(crate) fn gathered_attention_within(
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
    } = WindowShape::of("gathered_attention", q_win, k_win, mask)?;
    let counts = kept_counts(mask)?;
    let width = counts.iter().copied().max().unwrap_or(0) as usize;
    if width == 0 {
        return q_win.zeros_like();
    }
    let device = q_win.device();
    let (listed, bias) = kept_key_windows(mask, width)?;
    // Scaling the queries is cheaper than scaling the scores.
    let q = (q_win / (d as f64).sqrt())?.reshape((heads * nq, wt, d))?;
    let k = k_win.reshape((heads * nk, wt * d))?;
    let v = v_win.reshape((heads * nk, wt * d))?;
    let plan = RowChunks::new(&counts, d, q.dtype().size_in_bytes(), budget_bytes);
    let order = &plan.order;
    let mut outputs = Vec::with_capacity(plan.chunks.len() + 1);
    for &(start, n, width) in &plan.chunks {
        let rows = Tensor::from_slice(&order[start..start + n], n, device)?;
        let ids = listed
            .index_select(&rows, 0)?
            .narrow(1, 0, width)?
            .flatten_all()?;
        let keys = k.index_select(&ids, 0)?.reshape((n, width * wt, d))?;
        let values = v.index_select(&ids, 0)?.reshape((n, width * wt, d))?;
        // One bias per key token, shared by the window's 128 query rows.
        let token_bias = bias
            .index_select(&rows, 0)?
            .narrow(1, 0, width)?
            .reshape((n, width, 1))?
            .broadcast_as((n, width, wt))?
            .reshape((n, 1, width * wt))?;
        let scores = shape_log::matmul_named(
            "gathered_attention.scores",
            &q.index_select(&rows, 0)?,
            &keys.t()?,
        )?
        .to_dtype(DType::F32)?
        .broadcast_add(&token_bias)?;
        let probs = softmax::softmax_last_dim_in_place(scores)?.to_dtype(values.dtype())?;
        outputs.push(shape_log::matmul_named(
            "gathered_attention.values",
            &probs,
            &values,
        )?);
    }
    let live = plan.live_rows();
    if live < order.len() {
        outputs.push(Tensor::zeros(
            (order.len() - live, wt, d),
            q.dtype(),
            device,
        )?);
    }
    // Row `order[i]` is at position i of the joined outputs.
    let mut position = vec![0u32; order.len()];
    for (i, &row) in order.iter().enumerate() {
        position[row as usize] = i as u32;
    }
    let position = Tensor::from_vec(position, order.len(), device)?;
    Tensor::cat(&outputs, 0)?
        .index_select(&position, 0)?
        .reshape((heads, nq, wt, d))
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
        for rows in [1, 2, heads * nq] {
            let budget = rows * (128 * nk * 128 * 4 + 2 * nk * 128 * d * 4);
            let got = run_with(KernelPath::Portable, || {
                gathered_attention_within(&q, &k, &v, &mask, budget)
            })?;
            let err = max_error(&got, &want)?;
            assert!(err < 1e-5, "{rows} rows per chunk: max error {err}");
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

    /// Rows run by descending count, each chunk as wide as its first row, the
    /// rows that keep nothing left out.
    #[test]
    fn row_chunks_pad_only_to_each_chunks_widest_row() {
        // one row's scores and windows at width w: w * (65,536 + 2 * 128 * 8 * 4)
        let per_window = 128 * 128 * 4 + 2 * 128 * 8 * 4;
        let plan = RowChunks::new(&[2, 0, 5, 3, 5, 1], 8, 4, 2 * 5 * per_window);
        assert_eq!(plan.order, [2, 4, 3, 0, 5, 1]);
        // two rows of width 5, then three rows whose widest keeps 3
        assert_eq!(plan.chunks, [(0, 2, 5), (2, 3, 3)]);
        assert_eq!(plan.live_rows(), 5);
        assert_eq!(plan.padded_pairs(), 2 * 5 + 3 * 3);
    }

    #[test]
    fn the_list_holds_the_kept_windows_in_order_then_padding() -> Result<()> {
        let mask = Tensor::new(
            &[[[0u8, 1, 0, 1], [1, 1, 1, 0]], [[0, 0, 0, 0], [0, 0, 1, 0]]],
            &Device::Cpu,
        )?;
        assert_eq!(kept_counts(&mask)?, [2, 3, 0, 1]);
        let (listed, bias) = kept_key_windows(&mask, 3)?;
        let listed = listed.to_vec2::<u32>()?;
        // rows of heads x query windows; head 1 starts at key window 4
        assert_eq!(listed[0][..2], [1, 3]);
        assert_eq!(listed[1], [0, 1, 2]);
        assert_eq!(listed[3][0], 4 + 2);
        let kept: Vec<Vec<bool>> = bias
            .to_vec2::<f32>()?
            .into_iter()
            .map(|r| r.into_iter().map(|b| b == 0.0).collect())
            .collect();
        assert_eq!(kept[0], [true, true, false]);
        assert_eq!(kept[1], [true, true, true]);
        assert_eq!(kept[2], [false, false, false]);
        assert_eq!(kept[3], [true, false, false]);
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
