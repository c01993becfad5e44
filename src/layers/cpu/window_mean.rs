//! The mean over the tokens of each attention window, `[a, b, tokens, d]` to
//! `[a, b, d]`, for f32 CPU tensors: the block mask pools every query and key
//! window so, every block of every chunk. candle reduces over a middle
//! dimension one strided element at a time (about 50 ms per DiT block at
//! 512x512 output with three cached time windows on two Zen 4 cores); here
//! each window's rows are summed as vectors.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape};
use rayon::prelude::*;

use super::fast_math::simd_kernel;
use super::gemm::contiguous_f32;

pub(crate) struct WindowMean;

impl CustomOp1 for WindowMean {
    fn name(&self) -> &'static str {
        "window-mean"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(x, layout, "window mean", "input")?;
        let (a, b, tokens, d) = layout.shape().dims4()?;
        let mut out = vec![0f32; a * b * d];
        if tokens > 0 && d > 0 {
            out.par_chunks_mut(d)
                .zip(x.par_chunks(tokens * d))
                .for_each(|(out, window)| mean_rows(window, out));
        }
        Ok((CpuStorage::F32(out), Shape::from((a, b, d))))
    }
}

simd_kernel! {
    /// `out` (d values) = the mean of `rows` (whole rows of d values).
    fn mean_rows(rows: &[f32], out: &mut [f32]) {
        let d = out.len();
        for row in rows.chunks_exact(d) {
            for (o, &v) in out.iter_mut().zip(row) {
                *o += v;
            }
        }
        let inv = 1.0 / (rows.len() / d) as f32;
        out.iter_mut().for_each(|o| *o *= inv);
    }
}
