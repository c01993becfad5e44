//! The rotary position embedding of `model::rope` for f32 CPU tensors, in one
//! pass: the candle-op version splits the pairs into strided halves and takes
//! four broadcast products, two sums and a concatenation (about 30 ms per call
//! at 2048 tokens x 12 heads x 128 on two Zen 4 cores, twice per DiT block;
//! this pass takes a few).

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape};
use rayon::prelude::*;

use super::fast_math::simd_kernel;
use super::gemm::contiguous_f32;
use crate::layers::sparse_attention::{TokenGrid, WINDOW_TOKENS};

/// `x` `[tokens, heads, head_dim]` with `(re, im)` pairs rotated by the
/// angles of `cos`/`sin` `[tokens, head_dim / 2]` (the same for every head).
/// With `windows`, the result comes out as `sparse_attention::to_windows`
/// arranges it, `[heads, windows, 128, head_dim]`, in the same pass.
pub(crate) struct Rope {
    pub windows: Option<TokenGrid>,
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        cos: &CpuStorage,
        cos_layout: &Layout,
        sin: &CpuStorage,
        sin_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        const OP: &str = "rope";
        let x = contiguous_f32(x, x_layout, OP, "input")?;
        let cos = contiguous_f32(cos, cos_layout, OP, "cos table")?;
        let sin = contiguous_f32(sin, sin_layout, OP, "sin table")?;
        let (tokens, heads, head_dim) = x_layout.shape().dims3()?;
        let half = head_dim / 2;
        if !head_dim.is_multiple_of(2) || cos.len() != tokens * half || sin.len() != cos.len() {
            candle_core::bail!(
                "rope: input {:?} with tables {:?} and {:?}",
                x_layout.shape().dims(),
                cos_layout.shape().dims(),
                sin_layout.shape().dims()
            )
        }
        let row = heads * head_dim;
        let mut out = vec![0f32; x.len()];
        if row == 0 || half == 0 {
            return Ok((CpuStorage::F32(out), x_layout.shape().clone()));
        }
        let Some(grid) = self.windows else {
            out.par_chunks_mut(row)
                .zip(x.par_chunks(row))
                .zip(cos.par_chunks(half).zip(sin.par_chunks(half)))
                .with_min_len((4096 / row).max(1))
                .for_each(|((out, x), (cos, sin))| rotate(x, out, cos, sin));
            return Ok((CpuStorage::F32(out), x_layout.shape().clone()));
        };
        grid.check()?;
        if grid.frames * grid.rows * grid.cols != tokens {
            candle_core::bail!("rope: {tokens} tokens for a token grid {grid:?}")
        }
        let windows = tokens / WINDOW_TOKENS;
        // One job per (head, window): its 128 tokens' heads, gathered.
        out.par_chunks_mut(WINDOW_TOKENS * head_dim)
            .enumerate()
            .for_each(|(job, out)| {
                let (h, w) = (job / windows, job % windows);
                for (p, out) in out.chunks_exact_mut(head_dim).enumerate() {
                    let t = grid.window_token(w, p);
                    let x = &x[t * row + h * head_dim..][..head_dim];
                    rotate(x, out, &cos[t * half..][..half], &sin[t * half..][..half]);
                }
            });
        Ok((
            CpuStorage::F32(out),
            Shape::from((heads, windows, WINDOW_TOKENS, head_dim)),
        ))
    }
}

simd_kernel! {
    /// Heads of one token (`x` and `out` of whole heads, `2 * cos.len()`
    /// each): every pair `(re, im)` to `(re cos - im sin, re sin + im cos)`.
    fn rotate(x: &[f32], out: &mut [f32], cos: &[f32], sin: &[f32]) {
        let head = 2 * cos.len();
        for (x, out) in x.chunks_exact(head).zip(out.chunks_exact_mut(head)) {
            for (((x, out), &c), &s) in x.chunks_exact(2).zip(out.chunks_exact_mut(2)).zip(cos).zip(sin) {
                out[0] = x[0] * c - x[1] * s;
                out[1] = x[0] * s + x[1] * c;
            }
        }
    }
}
