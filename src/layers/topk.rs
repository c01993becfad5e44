//! The (k+1)-th largest value of every row, the threshold of the sparse mask's
//! top-k (docs/device-path.md, section "Self-attention").
//!
//! On the CPU fast path a sort gives it. CUDA's sort holds a whole row in one
//! block's shared memory and cannot take rows over
//! [`MAX_SORT_COLUMNS`](super::device_rules::MAX_SORT_COLUMNS), while the
//! mask's rows reach 72,900 columns at 1920-wide frames. The portable path
//! finds the value without a sort and without a copy to the host: on CUDA, by
//! the selection kernel ([`device_kernels::kth_largest`], one launch), once
//! the model has checked it at load; elsewhere, or when the check failed, by
//! bisection: a fixed number of steps, each a comparison and a row sum over
//! the whole tensor. Both give exactly the sort's value, ties included.

use candle_core::{D, DType, Result, Tensor};

use super::{attention_path, device_kernels, kernels};

/// Smallest positive f32 (the least subnormal), 2^-149: the geometric
/// midpoint's stand-in for a lower bound of zero.
const SMALLEST_POSITIVE: f64 = 1.401_298_464_324_817e-45;

/// Bisection steps. Every step roughly halves the number of f32 values left
/// between the bounds, and there are fewer than 2^31 non-negative f32 values
/// below 2 x the row maximum + 1; the test `bisection_walk_is_short_enough`
/// replays the walk and finds at most 32 steps, for any target.
pub const BISECTION_STEPS: usize = 40;

/// The (k+1)-th largest value (index `k` in descending order) of every row of
/// `rows` `[r, n]`, as `[r, 1]` f32: the value a descending sort puts at `k`.
/// The CPU fast path sorts; the portable path runs the selection kernel where
/// the model checked it at load (`attention_path`), else bisects.
/// Values must be finite and non-negative (the mask's probabilities are);
/// `k` must be below `n`.
pub fn kth_largest(rows: &Tensor, k: usize) -> Result<Tensor> {
    let (_, n) = rows.dims2()?;
    if k >= n {
        candle_core::bail!("kth_largest: k = {k} for rows of {n} values (k must be below n)")
    }
    let rows = rows.to_dtype(DType::F32)?.contiguous()?;
    if kernels::cpu_fast_path(&rows) {
        return rows.sort_last_dim(false)?.0.narrow(1, k, 1);
    }
    if attention_path::current().select_kernel {
        return device_kernels::kth_largest::kth_largest(&rows, k);
    }
    kth_largest_by_bisection(&rows, k)
}

/// The portable form of [`kth_largest`] for contiguous f32 `rows`.
///
/// Invariant, per row: at least k+1 values are `>= lo` and at most k are
/// `>= hi`, so the answer `v` (the (k+1)-th largest) lies in `[lo, hi)`: a
/// midpoint `m` has k+1 values `>= m` exactly when `m <= v`. Once `hi` is the
/// f32 just above `lo`, `[lo, hi)` holds one f32 value, which is `v`; the last
/// step takes the largest value below `hi`, which is then `v` itself.
pub fn kth_largest_by_bisection(rows: &Tensor, k: usize) -> Result<Tensor> {
    let device = rows.device();
    let mut lo = rows.min_keepdim(D::Minus1)?;
    // Above the maximum, so that no value is >= hi (with a margin of one, not a
    // subnormal, which a device flushing subnormals would read as zero).
    let mut hi = rows.max_keepdim(D::Minus1)?.affine(2.0, 1.0)?;
    // Scalars go to the device once, not once per step.
    let wanted = Tensor::new(&[[(k + 1) as f32]], device)?;
    let smallest_positive = Tensor::new(&[[SMALLEST_POSITIVE]], device)?;
    for _ in 0..BISECTION_STEPS {
        let mid = midpoint(&lo, &hi, &smallest_positive)?;
        let at_least = rows
            .broadcast_ge(&mid)?
            .to_dtype(DType::F32)?
            .sum_keepdim(D::Minus1)?;
        let enough = at_least.broadcast_ge(&wanted)?;
        lo = enough.where_cond(&mid, &lo)?;
        hi = enough.where_cond(&hi, &mid)?;
    }
    let below_hi = rows.broadcast_lt(&hi)?;
    let floor = Tensor::new(-1f32, device)?.broadcast_as(rows.shape())?;
    below_hi.where_cond(rows, &floor)?.max_keepdim(D::Minus1)
}

/// A point of `[lo, hi]` (f32, `0 <= lo < hi`) that splits the f32 values
/// between them about in half: the geometric mean while `hi` is more than
/// twice `lo` (f32 values are spread evenly in the exponent), the arithmetic
/// mean within a factor of two (evenly in the mantissa). Computed in f64, so
/// that neither the product nor the sum rounds before the final cast; a lower
/// bound of zero counts as `smallest_positive` (f64 `[1, 1]`) for the
/// geometric mean.
fn midpoint(lo: &Tensor, hi: &Tensor, smallest_positive: &Tensor) -> Result<Tensor> {
    let lo = lo.to_dtype(DType::F64)?;
    let hi = hi.to_dtype(DType::F64)?;
    let lo_positive = lo.broadcast_maximum(smallest_positive)?;
    let geometric = (&lo_positive * &hi)?.sqrt()?;
    let arithmetic = (&lo + &hi)?.affine(0.5, 0.0)?;
    let wide = hi.gt(&lo_positive.affine(2.0, 0.0)?)?;
    wide.where_cond(&geometric, &arithmetic)?
        .to_dtype(DType::F32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::kernels::{KernelPath, run_with};
    use candle_core::Device;

    fn by_sort(rows: &Tensor, k: usize) -> Result<Vec<f32>> {
        rows.sort_last_dim(false)?
            .0
            .narrow(1, k, 1)?
            .flatten_all()?
            .to_vec1::<f32>()
    }

    fn by_bisection(rows: &Tensor, k: usize) -> Result<Vec<f32>> {
        run_with(KernelPath::Portable, || kth_largest(rows, k))?
            .flatten_all()?
            .to_vec1::<f32>()
    }

    /// The scalar replay of the bisection's bounds for a target `v` in
    /// `[min, hi)`, with the same f64 midpoint and f32 rounding: steps until
    /// `hi` is the f32 just above `lo`.
    fn walk(v: f32, min: f32, max: f32) -> usize {
        let (mut lo, mut hi) = (min, 2.0 * max + 1.0);
        let mut steps = 0;
        while lo.to_bits() + 1 < hi.to_bits() && steps <= 2 * BISECTION_STEPS {
            let (l, h) = (lo as f64, hi as f64);
            let lp = l.max(SMALLEST_POSITIVE);
            let mid = if h > 2.0 * lp {
                (lp * h).sqrt()
            } else {
                (l + h) * 0.5
            } as f32;
            if mid <= v {
                lo = mid
            } else {
                hi = mid
            }
            steps += 1;
        }
        assert_eq!(lo, v, "the walk must end on the target");
        steps
    }

    #[test]
    fn bisection_walk_is_short_enough() {
        let mut targets = vec![0f32, f32::from_bits(1), 1.0];
        for e in 0..150 {
            let p = (2f64.powi(-e)) as f32;
            targets.extend([p, f32::from_bits(p.to_bits() + 1)]);
            targets.push(f32::from_bits(p.to_bits().saturating_sub(1)));
        }
        let mut state = 0x2545_f491_u32;
        for _ in 0..20_000 {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            targets.push(f32::from_bits(state % (1f32.to_bits() + 1)));
        }
        // from a row minimum of zero, or anywhere below the target
        let longest = targets
            .iter()
            .flat_map(|&v| [walk(v, 0.0, 1.0), walk(v, v * 0.5, 1.0), walk(v, v, 1.0)])
            .max()
            .unwrap_or(0);
        assert!(longest <= 32, "{longest} steps");
        assert!(longest < BISECTION_STEPS);
    }

    #[test]
    fn bisection_equals_sort_on_random_rows() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::randn(0f32, 3.0, (6, 5000), &dev)?;
        let probs = candle_nn::ops::softmax_last_dim(&logits)?;
        for k in [0, 1, 17, 2500, 4998, 4999] {
            assert_eq!(by_bisection(&probs, k)?, by_sort(&probs, k)?, "k = {k}");
        }
        Ok(())
    }

    /// Ties at the threshold, zeros (masked entries), a row of one value, tiny
    /// and subnormal values, neighbouring f32 values.
    #[test]
    fn bisection_equals_sort_on_ties_zeros_and_extremes() -> Result<()> {
        let dev = Device::Cpu;
        let next = |x: f32| f32::from_bits(x.to_bits() + 1);
        let tiny = f32::from_bits(3);
        let rows: Vec<[f32; 8]> = vec![
            [0.5, 0.5, 0.5, 0.25, 0.25, 0.0, 0.0, 0.0],
            [0.0; 8],
            [0.125; 8],
            [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [tiny, next(tiny), 0.0, tiny, 1e-30, 1e-38, 0.0, 1.0],
            [
                0.3,
                next(0.3),
                next(next(0.3)),
                0.3,
                0.0,
                1e-7,
                next(1e-7),
                0.9,
            ],
            [1.0, next(1.0), 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        ];
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let t = Tensor::from_vec(flat, (rows.len(), 8), &dev)?;
        for k in 0..8 {
            assert_eq!(by_bisection(&t, k)?, by_sort(&t, k)?, "k = {k}");
        }
        Ok(())
    }

    #[test]
    fn k_beyond_the_row_is_an_error() -> Result<()> {
        let t = Tensor::zeros((2, 4), DType::F32, &Device::Cpu)?;
        let err = kth_largest(&t, 4).expect_err("k = n accepted");
        assert!(err.to_string().contains("k = 4"), "{err}");
        Ok(())
    }
}
