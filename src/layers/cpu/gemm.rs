//! Pieces shared by the CPU fast paths (custom ops): the f32 data of an
//! operand, and `gemm` on strided operands that can add into its destination.

use candle_core::{CpuStorage, Layout, Result};

/// The contiguous f32 data of a CPU operand; `op` and `what` name it in errors.
pub(crate) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
    what: &str,
) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: {what} must be f32")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: {what} must be contiguous")
    };
    Ok(&data[start..end])
}

/// A matrix operand: first element, then the strides between rows and between
/// columns, in elements.
#[derive(Clone, Copy)]
pub(crate) struct Strided<P> {
    pub ptr: P,
    pub row_stride: usize,
    pub col_stride: usize,
}

/// `dst (m x n) = lhs (m x k) @ rhs (k x n)`, or `dst += ...` when `accumulate`,
/// on `threads` threads (1: on the caller's).
///
/// # Safety
/// Every element of the three operands that the sizes and strides reach must lie
/// in memory valid for reads (lhs, rhs) and writes (dst), and dst must not
/// overlap lhs or rhs.
pub(crate) unsafe fn gemm_f32(
    (m, n, k): (usize, usize, usize),
    dst: Strided<*mut f32>,
    accumulate: bool,
    lhs: Strided<*const f32>,
    rhs: Strided<*const f32>,
    threads: usize,
) {
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: forwarded to the caller (see above).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr,
            dst.col_stride as isize,
            dst.row_stride as isize,
            accumulate,
            lhs.ptr,
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.ptr,
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_writes_then_accumulates_on_strided_operands() {
        // lhs 2x2 row-major; rhs 2x2 read column-major from [1, 2, 3, 4]
        let lhs = [1f32, 2., 3., 4.];
        let rhs = [1f32, 2., 3., 4.];
        let mut dst = [0f32; 6]; // 2x2 with row stride 3
        let run = |dst: &mut [f32; 6], accumulate: bool| unsafe {
            gemm_f32(
                (2, 2, 2),
                Strided {
                    ptr: dst.as_mut_ptr(),
                    row_stride: 3,
                    col_stride: 1,
                },
                accumulate,
                Strided {
                    ptr: lhs.as_ptr(),
                    row_stride: 2,
                    col_stride: 1,
                },
                Strided {
                    ptr: rhs.as_ptr(),
                    row_stride: 1,
                    col_stride: 2,
                },
                1,
            )
        };
        run(&mut dst, false);
        // rhs = [[1, 3], [2, 4]]
        assert_eq!(dst, [5., 11., 0., 11., 25., 0.]);
        run(&mut dst, true);
        assert_eq!(dst, [10., 22., 0., 22., 50., 0.]);
    }
}
