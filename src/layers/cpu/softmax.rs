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

/// `row`'s values replaced by `exp(value - max)`, returning their sum (0 with
/// every entry masked out, `max` being `-inf`), in `LANES` lanes so that it
/// vectorises where it is inlined.
#[inline(always)]
fn exp_and_sum(row: &mut [f32], max: f32) -> f32 {
    if max == f32::NEG_INFINITY {
        // every entry masked out: no probability mass anywhere
        row.fill(0.0);
        return 0.0;
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
    sum + sums.iter().sum::<f32>()
}

simd_kernel! {
    /// Softmax of one row, in place.
    pub(crate) fn softmax_row(row: &mut [f32]) {
        let sum = exp_and_sum(row, max_of(row));
        if sum > 0.0 {
            let inv = 1.0 / sum;
            row.iter_mut().for_each(|v| *v *= inv);
        }
    }
}

simd_kernel! {
    /// The largest value of `row`, vectorised.
    fn max_in(row: &[f32]) -> f32 {
        max_of(row)
    }
}

simd_kernel! {
    /// `row`'s scores replaced by their exponentials against `max`; returns
    /// their sum.
    fn exp_in_place(row: &mut [f32], max: f32) -> f32 {
        exp_and_sum(row, max)
    }
}

/// A softmax taken a block of columns at a time (the flash-attention order),
/// per row the largest score so far and the sum of the exponentials against
/// it; the caller keeps the rows' outputs weighted by those exponentials.
#[derive(Default)]
pub(crate) struct RunningSoftmax {
    maxes: Vec<f32>,
    sums: Vec<f32>,
}

impl RunningSoftmax {
    /// `rows` rows that have met no score yet.
    pub(crate) fn reset(&mut self, rows: usize) {
        self.maxes.clear();
        self.maxes.resize(rows, f32::NEG_INFINITY);
        self.sums.clear();
        self.sums.resize(rows, 0.0);
    }

    /// Row `i` meets a block of scores whose largest is `block_max`. Where that
    /// raises the row's maximum, the sum so far and `weighted` (the row's
    /// outputs weighted by the earlier exponentials) are scaled to the new one.
    /// Returns the maximum the block's exponentials are to be taken against.
    pub(crate) fn raise(&mut self, i: usize, block_max: f32, weighted: &mut [f32]) -> f32 {
        let max = &mut self.maxes[i];
        if block_max > *max {
            if *max != f32::NEG_INFINITY {
                let scale = fast_math::exp(*max - block_max);
                self.sums[i] *= scale;
                weighted.iter_mut().for_each(|x| *x *= scale);
            }
            *max = block_max;
        }
        *max
    }

    /// Adds the sum of a block's exponentials to row `i`'s.
    pub(crate) fn add(&mut self, i: usize, block_sum: f32) {
        self.sums[i] += block_sum;
    }

    /// Row `i` meets the block of scores `row`, which become their
    /// exponentials against the row's maximum (`weighted` as in [`Self::raise`]).
    pub(crate) fn take(&mut self, i: usize, row: &mut [f32], weighted: &mut [f32]) {
        let max = self.raise(i, max_in(row), weighted);
        self.add(i, exp_in_place(row, max));
    }

    /// Divides each row of `out` (`d` values a row) by its sum; a row whose
    /// sum is zero (no score met) is set to zero.
    pub(crate) fn normalise(&self, out: &mut [f32], d: usize) {
        for (row, &sum) in out.chunks_exact_mut(d).zip(&self.sums) {
            let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
            row.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of a row through `RunningSoftmax`, each earlier block rescaled
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
            let mut running = RunningSoftmax::default();
            running.reset(1);
            for start in (0..row.len()).step_by(block) {
                let end = (start + block).min(row.len());
                let (done, next) = got.split_at_mut(start);
                running.take(0, &mut next[..end - start], done);
            }
            running.normalise(&mut got, row.len());
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-6, "block {block}: {g} vs {w}");
            }
        }
    }
}
