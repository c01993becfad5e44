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

simd_kernel! {
    /// One block of columns of a row of a running (flash-order) softmax: the
    /// scores in `row` become their exponentials against the row's largest
    /// score so far, which `max` holds and which is updated, and their sum is
    /// added to `sum`. Returns the factor by which what was summed against the
    /// previous maximum (`sum` before this block, outputs weighted by earlier
    /// exponentials) must be scaled: 1 when the maximum did not rise.
    pub(crate) fn running_exp_row(row: &mut [f32], max: &mut f32, sum: &mut f32) -> f32 {
        let new_max = max.max(max_of(row));
        if new_max == f32::NEG_INFINITY {
            row.fill(0.0); // nothing but masked scores so far
            return 1.0;
        }
        let scale = if new_max > *max { fast_math::exp(*max - new_max) } else { 1.0 };
        *max = new_max;
        let mut sums = [0f32; LANES];
        let mut chunks = row.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for (s, v) in sums.iter_mut().zip(c.iter_mut()) {
                *v = fast_math::exp(*v - new_max);
                *s += *v;
            }
        }
        let mut block_sum = sums.iter().sum::<f32>();
        for v in chunks.into_remainder() {
            *v = fast_math::exp(*v - new_max);
            block_sum += *v;
        }
        *sum = *sum * scale + block_sum;
        scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of a row through `running_exp_row`, each earlier block rescaled
    /// as it says, then divided by the sum, give the row's softmax.
    #[test]
    fn running_blocks_give_the_softmax() {
        let row: Vec<f32> = (0..100)
            .map(|i| ((i * 37 % 23) as f32 - 4.0) * 0.7)
            .collect();
        let mut want = row.clone();
        softmax_row(&mut want);
        for block in [7, 16, 33, 100] {
            let mut got = row.clone();
            let (mut max, mut sum) = (f32::NEG_INFINITY, 0.0);
            for start in (0..row.len()).step_by(block) {
                let end = (start + block).min(row.len());
                let scale = running_exp_row(&mut got[start..end], &mut max, &mut sum);
                got[..start].iter_mut().for_each(|v| *v *= scale);
            }
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g / sum - w).abs() < 1e-6,
                    "block {block}: {} vs {w}",
                    g / sum
                );
            }
        }
    }
}
