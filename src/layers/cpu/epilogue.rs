//! What a CPU convolution does to its sums as it writes them out: add a
//! residual of the output's shape, then ReLU. Fused into the copy each path
//! already makes from its working buffer, so a `relu(conv(x) + r)` costs no
//! pass of its own over an output that may be hundreds of megabytes.

use std::mem::MaybeUninit;

use super::fast_math::simd_kernel;

/// The operations after the sums (bias included), in this order.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Epilogue<'a> {
    /// Added value by value: the whole output `[n, c_out, h, w]`, contiguous.
    pub residual: Option<&'a [f32]>,
    pub relu: bool,
}

impl Epilogue<'_> {
    /// Writes `src` into `dst`, the output's values from flat index `at` (of
    /// the whole output) on, with the residual's values at the same indices.
    /// `dst` need not hold values yet: it is only written.
    #[inline]
    pub(crate) fn write(&self, dst: &mut [MaybeUninit<f32>], at: usize, src: &[f32]) {
        let dst = &mut dst[..src.len()];
        match (self.residual, self.relu) {
            (None, false) => copy_row(dst, src),
            (None, true) => relu_row(dst, src),
            (Some(r), relu) => add_row(dst, src, &r[at..at + src.len()], relu),
        }
    }
}

simd_kernel! {
    fn copy_row(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            d.write(s);
        }
    }
}

simd_kernel! {
    fn relu_row(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            d.write(s.max(0.0));
        }
    }
}

simd_kernel! {
    fn add_row(dst: &mut [MaybeUninit<f32>], src: &[f32], residual: &[f32], relu: bool) {
        let floor = if relu { 0.0 } else { f32::NEG_INFINITY };
        for ((d, &s), &r) in dst.iter_mut().zip(src).zip(residual) {
            d.write((s + r).max(floor));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_then_clamps() {
        let src = [-2f32, -0.5, 0.5, 3.0];
        let residual = [0f32, 1.0, 1.0, 10.0, -1.0, 1.0];
        let mut out = [MaybeUninit::new(9f32); 6];
        // SAFETY: every value was initialised above and is only overwritten.
        let values = |out: &[MaybeUninit<f32>; 6]| out.map(|v| unsafe { v.assume_init() });
        Epilogue::default().write(&mut out[1..], 1, &src);
        assert_eq!(values(&out), [9., -2., -0.5, 0.5, 3.0, 9.]);
        Epilogue {
            residual: None,
            relu: true,
        }
        .write(&mut out[1..], 1, &src);
        assert_eq!(values(&out), [9., 0., 0., 0.5, 3.0, 9.]);
        Epilogue {
            residual: Some(&residual),
            relu: false,
        }
        .write(&mut out[2..], 2, &src);
        // residual[2..6] = [1, 10, -1, 1]
        assert_eq!(values(&out), [9., 0., -1., 9.5, -0.5, 4.0]);
        Epilogue {
            residual: Some(&residual),
            relu: true,
        }
        .write(&mut out[2..], 2, &src);
        assert_eq!(values(&out), [9., 0., 0., 9.5, 0., 4.0]);
    }
}
