//! Locality-constrained block-sparse self-attention with a rolling KV cache
//! (docs/model.md, section "The sparse mask").
//!
//! Tokens are grouped into windows of 2 x 8 x 8 = 128 tokens (time, row, column).
//! A cheap block mask is built from window-pooled queries and keys, restricted to
//! a spatial neighbourhood and thinned by a top-k over each query time window;
//! attention then runs only on the (query window, key window) pairs it keeps.
//!
//! On the CPU fast path the top-k sorts and the attention reads only the kept
//! blocks. The portable path (every other device) finds the top-k threshold
//! without leaving the device ([`topk`]: one selection kernel on CUDA, else
//! bisection) and runs the attention the model chose at load
//! ([`attention_path`]): the fused CUDA kernel ([`device_kernels`]), the
//! gathered path ([`gathered_attention`]) or the mask as a bias
//! ([`masked_attention`]) (docs/device-path.md, section "Self-attention").

use candle_core::{D, DType, Device, Result, Tensor};

use super::attention_path::{self, AttentionPath};
use super::cpu::sparse_blocks;
use super::products::{self, CpuProducts};
use super::{
    device_kernels, gathered_attention, kernels, masked_attention, shape_log, softmax, topk,
};

pub use super::masked_attention::WINDOW_TOKENS;
const WINDOW_T: usize = 2;
const WINDOW_HW: usize = 8;

/// Sparse-attention settings of a stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SparseConfig {
    /// `topk_ratio` of the official code: fraction of the `nb x nb` window pairs
    /// of one time window that each query time window keeps.
    pub topk_ratio: f64,
    /// Time windows kept in the KV cache (`int(kv_ratio)`).
    pub kv_time_windows: usize,
    /// Side of the square neighbourhood of key blocks a query block may see.
    pub local_range: usize,
}

impl SparseConfig {
    /// The official mapping from the user-facing `sparse_ratio` to `topk_ratio`,
    /// relative to a 768 x 1280 frame.
    pub fn new(
        sparse_ratio: f64,
        kv_ratio: f64,
        local_range: usize,
        height: usize,
        width: usize,
    ) -> Self {
        Self {
            topk_ratio: sparse_ratio * 768.0 * 1280.0 / (height * width) as f64,
            kv_time_windows: kv_ratio as usize,
            local_range,
        }
    }
}

/// Token grid of one chunk, in tokens (one token per 2 x 2 latent patch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenGrid {
    pub frames: usize,
    pub rows: usize,
    pub cols: usize,
}

impl TokenGrid {
    pub fn check(&self) -> Result<()> {
        if !self.frames.is_multiple_of(WINDOW_T)
            || !self.rows.is_multiple_of(WINDOW_HW)
            || !self.cols.is_multiple_of(WINDOW_HW)
        {
            candle_core::bail!(
                "token grid {}x{}x{} is not a multiple of the 2x8x8 attention window",
                self.frames,
                self.rows,
                self.cols
            )
        }
        Ok(())
    }
    /// Windows in one time window.
    pub fn blocks_per_time_window(&self) -> usize {
        (self.rows / WINDOW_HW) * (self.cols / WINDOW_HW)
    }
    pub fn time_windows(&self) -> usize {
        self.frames / WINDOW_T
    }
    /// The token (in (t, y, x) order) at position `p` of window `w`, as
    /// [`to_windows`] places them.
    pub fn window_token(&self, w: usize, p: usize) -> usize {
        let (br, bc) = (self.rows / WINDOW_HW, self.cols / WINDOW_HW);
        let (tw, b) = (w / (br * bc), w % (br * bc));
        let (t, y, x) = (
            p / (WINDOW_HW * WINDOW_HW),
            (p / WINDOW_HW) % WINDOW_HW,
            p % WINDOW_HW,
        );
        let frame = tw * WINDOW_T + t;
        let row = (b / bc) * WINDOW_HW + y;
        let col = (b % bc) * WINDOW_HW + x;
        (frame * self.rows + row) * self.cols + col
    }
}

/// Rearranges `[tokens, heads, head_dim]` (tokens in (t, y, x) order) into windows:
/// `[heads, windows, 128, head_dim]`, windows in (time window, block row, block
/// column) order and tokens inside a window in (t, y, x) order.
pub fn to_windows(x: &Tensor, grid: TokenGrid) -> Result<Tensor> {
    let (_, heads, head_dim) = x.dims3()?;
    let (tw, br, bc) = (
        grid.frames / WINDOW_T,
        grid.rows / WINDOW_HW,
        grid.cols / WINDOW_HW,
    );
    x.reshape(&[tw, WINDOW_T, br, WINDOW_HW, bc, WINDOW_HW, heads, head_dim][..])?
        .permute(vec![6, 0, 2, 4, 1, 3, 5, 7])?
        .contiguous()?
        .reshape((heads, tw * br * bc, WINDOW_TOKENS, head_dim))
}

/// Inverse of [`to_windows`]: `[heads, windows, 128, head_dim]` to
/// `[tokens, heads * head_dim]`.
pub fn from_windows(x: &Tensor, grid: TokenGrid) -> Result<Tensor> {
    let (heads, _, _, head_dim) = x.dims4()?;
    let (tw, br, bc) = (
        grid.frames / WINDOW_T,
        grid.rows / WINDOW_HW,
        grid.cols / WINDOW_HW,
    );
    x.reshape(&[heads, tw, br, bc, WINDOW_T, WINDOW_HW, WINDOW_HW, head_dim][..])?
        .permute(vec![1, 4, 2, 5, 3, 6, 0, 7])?
        .contiguous()?
        .reshape((grid.frames * grid.rows * grid.cols, heads * head_dim))
}

/// Additive bias `[query windows, key windows]` (0 or -inf) allowing a query block
/// at (r, c) to see key blocks (r', c') of any time window with
/// `r - L/2 <= r' <= r - L/2 + L - 1`, and the same for columns (no clamping at
/// the borders, as in the released code).
pub fn local_bias(
    grid: TokenGrid,
    query_windows: usize,
    key_windows: usize,
    local_range: usize,
    device: &Device,
) -> Result<Tensor> {
    let bc = grid.cols / WINDOW_HW;
    let nb = grid.blocks_per_time_window();
    let half = (local_range / 2) as i64;
    let mut bias = Vec::with_capacity(query_windows * key_windows);
    for q in 0..query_windows {
        let (qr, qc) = (((q % nb) / bc) as i64, ((q % nb) % bc) as i64);
        for k in 0..key_windows {
            let (kr, kc) = (((k % nb) / bc) as i64, ((k % nb) % bc) as i64);
            let inside = |qv: i64, kv: i64| kv >= qv - half && kv < qv - half + local_range as i64;
            bias.push(if inside(qr, kr) && inside(qc, kc) {
                0f32
            } else {
                f32::NEG_INFINITY
            });
        }
    }
    Tensor::from_vec(bias, (query_windows, key_windows), device)
}

/// The block mask `[heads, query windows, key windows]` (u8, 1 = attend).
///
/// Scores are pooled-query . pooled-key / sqrt(head_dim) plus the local bias,
/// softmaxed over keys; then, separately for every head and query time window,
/// the entries strictly greater than the (k+1)-th largest of that
/// `nb x key windows` matrix are kept, `k = int(nb^2 * topk_ratio) - 1` capped at
/// the matrix size - 1.
pub fn block_mask(
    q_win: &Tensor,
    k_win: &Tensor,
    bias: &Tensor,
    grid: TokenGrid,
    topk_ratio: f64,
) -> Result<Tensor> {
    let head_dim = q_win.dim(3)?;
    let nb = grid.blocks_per_time_window();
    let pooled_q = window_mean(q_win)?;
    let pooled_k = window_mean(k_win)?;
    let scores = (shape_log::matmul_named("block_mask.scores", &pooled_q, &pooled_k.t()?)?
        / (head_dim as f64).sqrt())?;
    let probs = softmax::softmax_last_dim_in_place(scores.broadcast_add(bias)?)?;
    keep_top_k(&probs, nb, topk_ratio)
}

/// The mean over each window's tokens, `[heads, windows, 128, d]` to
/// `[heads, windows, d]`, in f32: on the CPU fast path as vector sums.
fn window_mean(x: &Tensor) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    if kernels::cpu_fast_path(&x) {
        return x
            .contiguous()?
            .apply_op1_no_bwd(&super::cpu::window_mean::WindowMean);
    }
    x.mean(2)
}

/// The top-k step of [`block_mask`] on its probabilities `[heads, nq, nk]`,
/// `nb` windows per time window.
fn keep_top_k(probs: &Tensor, nb: usize, topk_ratio: f64) -> Result<Tensor> {
    let (heads, nq, nk) = probs.dims3()?;
    if nb == 0 || !nq.is_multiple_of(nb) {
        candle_core::bail!(
            "block_mask: {nq} query windows are not whole time windows of {nb} windows"
        )
    }
    let flat = probs.reshape((heads * (nq / nb), nb * nk))?;
    let k = ((nb * nb) as f64 * topk_ratio) as i64 - 1;
    let k = k.clamp(0, (nb * nk) as i64 - 1) as usize;
    let threshold = topk::kth_largest(&flat, k)?;
    flat.broadcast_gt(&threshold)?.reshape((heads, nq, nk))
}

/// Attention of `q_win` `[heads, nq, 128, d]` over the key windows that `mask`
/// `[heads, nq, nk]` allows in `k_win` / `v_win` `[heads, nk, 128, d]`, softmax
/// scale 1/sqrt(d). A query window with no allowed key window gets zeros.
///
/// On the CPU in f32, consecutive query windows of a head that keep the same
/// key windows form one batch whose kept keys are read in place
/// ([`sparse_blocks`]), so the work is proportional to the kept (query, key)
/// pairs. The portable path keeps the mask on the device and runs the
/// attention path in force on this thread ([`attention_path::current`]).
pub fn sparse_attention(
    q_win: &Tensor,
    k_win: &Tensor,
    v_win: &Tensor,
    mask: &Tensor,
) -> Result<Tensor> {
    sparse_attention_with(q_win, k_win, v_win, mask, CpuProducts::F32)
}

/// [`sparse_attention`] with the CPU fast path's two products in `products`'
/// precision (bf16: bf16 operands, f32 sums and softmax; the layers of a
/// model loaded for bf16 products pass it). Other paths ignore it.
pub fn sparse_attention_with(
    q_win: &Tensor,
    k_win: &Tensor,
    v_win: &Tensor,
    mask: &Tensor,
    products: CpuProducts,
) -> Result<Tensor> {
    if !kernels::cpu_fast_path(q_win) {
        return match attention_path::current().attention {
            AttentionPath::Fused => {
                device_kernels::fused_attention::fused_attention(q_win, k_win, v_win, mask)
            }
            AttentionPath::Gathered => {
                gathered_attention::gathered_attention(q_win, k_win, v_win, mask)
            }
            AttentionPath::Masked => masked_attention::masked_attention(q_win, k_win, v_win, mask),
        };
    }
    let (heads, nq, wt, d) = q_win.dims4()?;
    let nk = k_win.dim(1)?;
    let mask_host = mask.to_dtype(DType::U8)?.flatten_all()?.to_vec1::<u8>()?;
    // Rows are (head, query window) pairs; their kept key windows, as indices into
    // the flattened [heads * nk] key windows.
    let rows: Vec<Vec<u32>> = (0..heads * nq)
        .map(|row| {
            let h = row / nq;
            let m = &mask_host[row * nk..(row + 1) * nk];
            (0..nk)
                .filter(|&j| m[j] != 0)
                .map(|j| (h * nk + j) as u32)
                .collect()
        })
        .collect();
    // Scaling the queries is cheaper than scaling the scores.
    let q_rows = (q_win.reshape((heads * nq, wt, d))? / (d as f64).sqrt())?;
    let op = sparse_blocks::BlockSparseAttention {
        batches: sparse_blocks::batches(&rows),
        bf16: products == CpuProducts::Bf16 && products::bf16_available(),
    };
    op.log_products(wt, d);
    let k = k_win.reshape((heads * nk, wt, d))?.contiguous()?;
    let v = v_win.reshape((heads * nk, wt, d))?.contiguous()?;
    q_rows
        .contiguous()?
        .apply_op3_no_bwd(&k, &v, &op)?
        .reshape((heads, nq, wt, d))
}

/// Dense masked reference of [`sparse_attention`]: every key token, with masked
/// blocks at -inf, one head at a time. Used by tests and benchmarks.
pub fn dense_masked_attention(
    q_win: &Tensor,
    k_win: &Tensor,
    v_win: &Tensor,
    mask: &Tensor,
) -> Result<Tensor> {
    let heads = q_win.dim(0)?;
    let outs = (0..heads)
        .map(|h| {
            dense_head(
                &q_win.get(h)?,
                &k_win.get(h)?,
                &v_win.get(h)?,
                Some(&mask.get(h)?),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::stack(&outs, 0)
}

/// Plain dense attention of every query over every key (no mask), one head at a
/// time: the baseline that sparse attention is measured against.
pub fn dense_attention(q_win: &Tensor, k_win: &Tensor, v_win: &Tensor) -> Result<Tensor> {
    let heads = q_win.dim(0)?;
    let outs = (0..heads)
        .map(|h| dense_head(&q_win.get(h)?, &k_win.get(h)?, &v_win.get(h)?, None))
        .collect::<Result<Vec<_>>>()?;
    Tensor::stack(&outs, 0)
}

/// One head: `q` `[nq, 128, d]`, `k`/`v` `[nk, 128, d]`, `mask` `[nq, nk]`.
fn dense_head(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let (nq, wt, d) = q.dims3()?;
    let nk = k.dim(0)?;
    let q = (q.reshape((nq * wt, d))? / (d as f64).sqrt())?;
    let k = k.reshape((nk * wt, d))?;
    let v = v.reshape((nk * wt, d))?;
    let scores = shape_log::matmul(&q, &k.t()?)?.to_dtype(DType::F32)?;
    let Some(mask) = mask else {
        let probs = softmax::softmax_last_dim_in_place(scores)?.to_dtype(v.dtype())?;
        return shape_log::matmul(&probs, &v)?.reshape((nq, wt, d));
    };
    let allowed = mask.to_dtype(DType::F32)?;
    let bias = ((allowed.ones_like()? - &allowed)? * -1e30)?
        .reshape((nq, 1, nk, 1))?
        .broadcast_as((nq, wt, nk, wt))?
        .reshape((nq * wt, nk * wt))?;
    let probs = softmax::softmax_last_dim_in_place((scores + bias)?)?;
    // Rows without any allowed key are zero, as in the reference kernel.
    let live = allowed
        .max_keepdim(D::Minus1)?
        .reshape((nq, 1, 1))?
        .broadcast_as((nq, wt, 1))?
        .reshape((nq * wt, 1))?;
    shape_log::matmul(&probs.broadcast_mul(&live)?.to_dtype(v.dtype())?, &v)?.reshape((nq, wt, d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::kernels::{KernelPath, run_with};

    const GRID: TokenGrid = TokenGrid {
        frames: 2,
        rows: 16,
        cols: 24,
    };

    #[test]
    fn windows_round_trip_and_order() -> Result<()> {
        let dev = Device::Cpu;
        let grid = TokenGrid {
            frames: 4,
            rows: 16,
            cols: 8,
        };
        let tokens = grid.frames * grid.rows * grid.cols;
        let x = Tensor::arange(0f32, (tokens * 2 * 3) as f32, &dev)?.reshape((tokens, 2, 3))?;
        let w = to_windows(&x, grid)?;
        assert_eq!(w.dims(), &[2, 4, 128, 3]);
        // window 1 is time window 0, block row 1; its first token is (t=0, y=8, x=0)
        let first = w.get(0)?.get(1)?.get(0)?.get(0)?.to_scalar::<f32>()?;
        assert_eq!(first as usize, (8 * 8) * 6);
        // token 64 of window 0 is (t=1, y=0, x=0)
        let t1 = w.get(0)?.get(0)?.get(64)?.get(0)?.to_scalar::<f32>()?;
        assert_eq!(t1 as usize, 128 * 6);
        let back = from_windows(&w, grid)?;
        assert_eq!(
            back.flatten_all()?.to_vec1::<f32>()?,
            x.flatten_all()?.to_vec1::<f32>()?
        );
        Ok(())
    }

    #[test]
    fn local_bias_is_a_shifted_window() -> Result<()> {
        // 2 x 3 blocks, L = 3: block (0, 0) sees columns 0..=1 of rows 0..=1
        let b = local_bias(GRID, 6, 12, 3, &Device::Cpu)?.to_vec2::<f32>()?;
        let row: Vec<bool> = b[0].iter().map(|v| v.is_finite()).collect();
        assert_eq!(&row[..6], &[true, true, false, true, true, false]);
        assert_eq!(&row[6..], &row[..6]);
        // L = 2: half = 1, so block (1, 2) sees rows 0..=1 and columns 1..=2
        let b = local_bias(GRID, 6, 6, 2, &Device::Cpu)?.to_vec2::<f32>()?;
        let row: Vec<bool> = b[5].iter().map(|v| v.is_finite()).collect();
        assert_eq!(row, vec![false, true, true, false, true, true]);
        Ok(())
    }

    /// The CPU's window pooling of the block mask equals candle's mean.
    #[test]
    fn window_mean_matches_candle_mean() -> Result<()> {
        let x = Tensor::randn(0f32, 1.0, (3, 5, 128, 20), &Device::Cpu)?;
        let fast = window_mean(&x)?;
        let want = x.mean(2)?;
        assert_eq!(fast.dims(), &[3, 5, 20]);
        let err = (fast - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 1e-6, "{err}");
        Ok(())
    }

    #[test]
    fn sparse_matches_dense_masked_reference() -> Result<()> {
        let dev = Device::Cpu;
        let (heads, nq, nk, d) = (2, 6, 18, 16);
        let q = Tensor::randn(0f32, 1.0, (heads, nq, 128, d), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (heads, nk, 128, d), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (heads, nk, 128, d), &dev)?;
        let bits: Vec<u8> = (0..heads * nq * nk)
            .map(|i| ((i * 7 + i / 5) % 3 != 0) as u8)
            .collect();
        let mut bits = bits;
        // one query window without any key window
        for j in 0..nk {
            bits[nk + j] = 0;
        }
        let mask = Tensor::from_vec(bits, (heads, nq, nk), &dev)?;
        let sparse = sparse_attention(&q, &k, &v, &mask)?;
        let dense = dense_masked_attention(&q, &k, &v, &mask)?;
        let err = (sparse - &dense)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 1e-5, "max error {err}");
        // the portable path, which other devices take
        let portable = run_with(KernelPath::Portable, || sparse_attention(&q, &k, &v, &mask))?;
        let err = (portable - &dense)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 1e-5, "portable path: max error {err}");
        let empty = dense.get(0)?.get(1)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(empty, 0.0);
        Ok(())
    }

    /// With bf16 products (a model loaded for them on a CPU with AVX512_BF16;
    /// in unit tests, emulated where the processor lacks it)
    /// the CPU path stays within bf16 rounding of the dense f32 reference, on
    /// runs, batches, an odd head size and a query window without keys.
    #[test]
    fn bf16_products_stay_within_rounding() -> Result<()> {
        let dev = Device::Cpu;
        let (heads, nq, nk) = (2, 7, 11);
        for d in [16, 9] {
            let q = Tensor::randn(0f32, 1.0, (heads, nq, 128, d), &dev)?;
            let k = Tensor::randn(0f32, 1.0, (heads, nk, 128, d), &dev)?;
            let v = Tensor::randn(0f32, 1.0, (heads, nk, 128, d), &dev)?;
            let mut bits: Vec<u8> = (0..heads * nq * nk)
                .map(|i| ((i * 7 + i / 5) % 3 != 0 || i >= nq * nk) as u8)
                .collect();
            bits[nk..2 * nk].fill(0);
            let mask = Tensor::from_vec(bits, (heads, nq, nk), &dev)?;
            let dense = dense_masked_attention(&q, &k, &v, &mask)?;
            let bf16 = sparse_attention_with(&q, &k, &v, &mask, CpuProducts::Bf16)?;
            let err = (&bf16 - &dense)?.abs()?.max_all()?.to_scalar::<f32>()?;
            // unit-scale values: scores and averages move by a few 2^-8
            assert!(err > 0.0 && err < 3e-2, "d={d}: max error {err}");
            let empty = bf16.get(0)?.get(1)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(empty, 0.0);
        }
        Ok(())
    }

    /// Query windows with equal key sets are batched (up to 4 at a time on the
    /// CPU path); runs of key windows and a fully kept head give the same result.
    #[test]
    fn batched_rows_match_dense_masked_reference() -> Result<()> {
        let dev = Device::Cpu;
        let (heads, nq, nk, d) = (2, 9, 7, 8);
        let q = Tensor::randn(0f32, 1.0, (heads, nq, 128, d), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (heads, nk, 128, d), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (heads, nk, 128, d), &dev)?;
        let keep = [1u8, 1, 0, 1, 1, 1, 0];
        let bits: Vec<u8> = (0..heads * nq * nk)
            .map(|i| if i < nq * nk { keep[i % nk] } else { 1 })
            .collect();
        let mask = Tensor::from_vec(bits, (heads, nq, nk), &dev)?;
        let sparse = sparse_attention(&q, &k, &v, &mask)?;
        let dense = dense_masked_attention(&q, &k, &v, &mask)?;
        let err = (sparse - dense)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 1e-5, "max error {err}");
        Ok(())
    }

    #[test]
    fn top_k_keeps_strictly_greater_entries_per_time_window() -> Result<()> {
        let dev = Device::Cpu;
        let grid = TokenGrid {
            frames: 2,
            rows: 8,
            cols: 16,
        }; // nb = 2
        let q = Tensor::randn(0f32, 1.0, (1, 2, 128, 8), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (1, 4, 128, 8), &dev)?;
        let bias = local_bias(grid, 2, 4, 11, &dev)?;
        // k = int(4 * 1.0) - 1 = 3: 3 of the 8 entries survive
        let mask = block_mask(&q, &k, &bias, grid, 1.0)?;
        assert_eq!(mask.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()?, 3);
        // a huge ratio is capped: all but the single smallest entry survive
        let mask = block_mask(&q, &k, &bias, grid, 100.0)?;
        assert_eq!(mask.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()?, 7);
        Ok(())
    }

    /// The top-k step on the same probabilities through the sort (fast path)
    /// and through the portable bisection.
    fn top_k_both_ways(probs: &Tensor, nb: usize, ratio: f64) -> Result<(Tensor, Tensor)> {
        let fast = keep_top_k(probs, nb, ratio)?;
        let portable = run_with(KernelPath::Portable, || keep_top_k(probs, nb, ratio))?;
        Ok((fast, portable))
    }

    fn kept(mask: &Tensor) -> Result<u32> {
        mask.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()
    }

    /// 1920 x 1088 output is padded to 1920 x 1152: 72 x 120 tokens, 9 x 15 =
    /// 135 windows per time window, and at kv-ratio 3 a steady chunk's mask
    /// rows hold 135 x 405 = 54,675 entries, beyond CUDA's sort. The portable
    /// mask is the sort's, entry for entry, for a threshold inside the nonzero
    /// entries, one on the zeros of the local bias, and the capped k.
    #[test]
    fn portable_mask_equals_sorted_mask_at_1920x1152() -> Result<()> {
        let dev = Device::Cpu;
        let grid = TokenGrid {
            frames: 2,
            rows: 1152 / 16,
            cols: 1920 / 16,
        };
        let nb = grid.blocks_per_time_window();
        assert_eq!(nb, 135);
        let sparse = SparseConfig::new(2.0, 3.0, 11, 1152, 1920);
        let nk = sparse.kv_time_windows * nb;
        let q = Tensor::randn(0f32, 4.0, (2, nb, 128, 16), &dev)?;
        let k = Tensor::randn(0f32, 4.0, (2, nk, 128, 16), &dev)?;
        let bias = local_bias(grid, nb, nk, sparse.local_range, &dev)?;
        // the probabilities block_mask thresholds, then the two top-k paths
        let pooled_q = q.mean(2)?;
        let pooled_k = k.mean(2)?;
        let scores = (pooled_q.matmul(&pooled_k.t()?)? / 4.0)?.broadcast_add(&bias)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        assert!(nb * nk > crate::layers::device_rules::MAX_SORT_COLUMNS);
        let nonzero = probs
            .ne(0f32)?
            .to_dtype(DType::U32)?
            .sum_all()?
            .to_scalar::<u32>()?;
        for ratio in [sparse.topk_ratio, 0.05, 2.5, 100.0] {
            let (fast, portable) = top_k_both_ways(&probs, nb, ratio)?;
            assert_eq!(
                fast.to_vec3::<u8>()?,
                portable.to_vec3::<u8>()?,
                "ratio {ratio}"
            );
            assert!(kept(&fast)? > 0 && kept(&fast)? <= nonzero, "ratio {ratio}");
        }
        // ratio 2.5 asks for more entries than are nonzero: all nonzero kept
        let (fast, _) = top_k_both_ways(&probs, nb, 2.5)?;
        assert_eq!(kept(&fast)?, nonzero);
        // and the whole block_mask runs on the portable path at this width
        let mask = run_with(KernelPath::Portable, || {
            block_mask(&q, &k, &bias, grid, sparse.topk_ratio)
        })?;
        assert_eq!(mask.dims(), &[2, nb, nk]);
        Ok(())
    }

    /// Ties at the threshold keep none of the tied entries, on both paths.
    #[test]
    fn portable_mask_breaks_ties_like_the_sort() -> Result<()> {
        let dev = Device::Cpu;
        // one head, nb = 2 query windows, 3 key windows: rows of 6 entries
        let probs = Tensor::new(&[[[0.5f32, 0.25, 0.25], [0.25, 0.25, 0.0]]], &dev)?;
        // k = int(4 * 0.5) - 1 = 1: threshold 0.25 (tied), only 0.5 is kept
        let (fast, portable) = top_k_both_ways(&probs, 2, 0.5)?;
        assert_eq!(fast.to_vec3::<u8>()?, portable.to_vec3::<u8>()?);
        assert_eq!(kept(&portable)?, 1);
        // k = int(4 * 1.5) - 1 = 5: threshold 0.0, every nonzero entry kept
        let (fast, portable) = top_k_both_ways(&probs, 2, 1.5)?;
        assert_eq!(fast.to_vec3::<u8>()?, portable.to_vec3::<u8>()?);
        assert_eq!(kept(&portable)?, 5);
        // k beyond the row is capped at its last entry
        let (fast, portable) = top_k_both_ways(&probs, 2, 50.0)?;
        assert_eq!(fast.to_vec3::<u8>()?, portable.to_vec3::<u8>()?);
        assert_eq!(kept(&portable)?, 5);
        Ok(())
    }
}
