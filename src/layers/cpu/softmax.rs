//! The in-place softmax of `layers::softmax` for f32 CPU tensors: one
//! vectorised pass per row with the fast exp of [`fast_math`].

use candle_core::{CpuStorage, InplaceOp1, Layout, Result};
use rayon::prelude::*;

use super::fast_math::{self, simd_kernel};

pub(crate) struct SoftmaxInPlace;

impl InplaceOp1 for SoftmaxInPlace {
    fn name(&self) -> &'static str {
        "softmax-last-dim-in-place"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("fast softmax: f32 input only")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("fast softmax: input must be contiguous")
        };
        let row = layout.shape().dims().last().copied().unwrap_or(1).max(1);
        // Short rows are handed out several at a time.
        let min_rows = (4096 / row).max(1);
        data[start..end]
            .par_chunks_mut(row)
            .with_min_len(min_rows)
            .for_each(softmax_row);
        Ok(())
    }
}

/// Lanes the row reductions keep, so that they vectorise.
pub(crate) const LANES: usize = 16;

/// The largest value of `row` (`-inf` for an empty row), in `LANES` lanes so
/// that it vectorises where it is inlined.
#[inline(always)]
pub(crate) fn max_of(row: &[f32]) -> f32 {
    let mut maxes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (m, &v) in maxes.iter_mut().zip(c) {
            *m = if v > *m { v } else { *m };
        }
    }
    chunks
        .remainder()
        .iter()
        .chain(&maxes)
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

simd_kernel! {
    /// Softmax of one row, in place.
    pub(crate) fn softmax_row(row: &mut [f32]) {
        let max = max_of(row);
        if max == f32::NEG_INFINITY {
            // every entry masked out: no probability mass anywhere
            row.fill(0.0);
            return;
        }
        let mut sums = [0f32; LANES];
        let mut chunks = row.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for (s, v) in sums.iter_mut().zip(c.iter_mut()) {
                *v = fast_math::exp(*v - max);
                *s += *v;
            }
        }
        let mut sum = 0f32;
        for v in chunks.into_remainder() {
            *v = fast_math::exp(*v - max);
            sum += *v;
        }
        let inv = 1.0 / (sum + sums.iter().sum::<f32>());
        row.iter_mut().for_each(|v| *v *= inv);
    }
}
