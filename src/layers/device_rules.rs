//! Operand checks for the rules candle's CUDA backend imposes, so that an
//! operand CUDA would refuse fails a CPU test that forces the portable path
//! (docs/device-path.md, section "Self-attention").
//!
//! The checks run only where they can catch something: on the portable path
//! (forced, or on a device other than the CPU) and only in builds with
//! `debug_assertions`, `test` or the `devtools` feature. Tests here run with
//! `--release`, and `devtools` is on in every test build (the crate's
//! dev-dependency on itself turns it on), so every test build checks; the
//! plugin's release build does not pay for them.

use candle_core::{DType, Layout, Result, Tensor};

use super::kernels::{self, KernelPath};

/// Whether this build checks operands at all.
const ENABLED: bool = cfg!(any(test, debug_assertions, feature = "devtools"));

/// Widest row candle's CUDA `arg_sort` can take: one block holds the row,
/// padded to a power of two, as u32 in the default 48 KiB of shared memory, so
/// the padded width is at most 8,192.
pub const MAX_SORT_COLUMNS: usize = 8192;

/// Whether operands of an op on `t`'s device are checked now.
pub fn checking(t: &Tensor) -> bool {
    ENABLED && (!t.device().is_cpu() || kernels::current() == KernelPath::Portable)
}

/// Whether the last two dims `[rows, cols]` with strides `[s_rows, s_cols]` are
/// what cuBLAS takes: row-major contiguous or its transpose. A dimension of
/// one may have any stride (candle's `gemm_config` allows it).
fn plain_or_transposed(rows: usize, cols: usize, s_rows: usize, s_cols: usize) -> bool {
    let plain = (s_cols == 1 || cols == 1) && (s_rows == cols || rows == 1);
    let transposed = (s_cols == rows || cols == 1) && (s_rows == 1 || rows == 1);
    plain || transposed
}

/// Whether the batch dims (all but the last two) can be walked with one
/// stride: at most two batch dims, the outer one a multiple of the inner one
/// unless either has size one.
fn single_batch_stride(layout: &Layout) -> bool {
    let dims = layout.dims();
    let stride = layout.stride();
    let batch = &stride[..stride.len().saturating_sub(2)];
    match *batch {
        [] | [_] => true,
        [outer, inner] => outer == inner * dims[1] || dims[0] == 1 || dims[1] == 1,
        _ => false,
    }
}

fn describe(t: &Tensor) -> String {
    format!("shape {:?} stride {:?}", t.dims(), t.stride())
}

/// A matrix product operand: rank >= 2, last two dims plain or transposed,
/// batch dims reachable with one stride (candle-core's CUDA `gemm_config`).
pub fn check_matmul_operand(op: &str, side: &str, t: &Tensor) -> Result<()> {
    if !checking(t) {
        return Ok(());
    }
    let (dims, stride) = (t.dims(), t.stride());
    if dims.len() < 2 {
        candle_core::bail!("{op}: {side} operand has rank {} (< 2)", dims.len())
    }
    let r = dims.len();
    if !plain_or_transposed(dims[r - 2], dims[r - 1], stride[r - 2], stride[r - 1]) {
        candle_core::bail!(
            "{op}: {side} operand ({}) has last two dims neither contiguous nor \
             transposed-contiguous, which CUDA matmul refuses",
            describe(t)
        )
    }
    if !single_batch_stride(t.layout()) {
        candle_core::bail!(
            "{op}: {side} operand ({}) has batch dims that CUDA matmul cannot walk \
             with one stride (more than two, or not nested)",
            describe(t)
        )
    }
    Ok(())
}

/// Both operands of `a @ b`.
pub fn check_matmul(op: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    check_matmul_operand(op, "left", a)?;
    check_matmul_operand(op, "right", b)
}

/// An op whose CUDA kernel reads its input as one contiguous block
/// (candle-nn's softmax, arg_sort).
pub fn check_contiguous(op: &str, t: &Tensor) -> Result<()> {
    if checking(t) && !t.is_contiguous() {
        candle_core::bail!(
            "{op}: input ({}) is not contiguous, which its CUDA kernel requires",
            describe(t)
        )
    }
    Ok(())
}

/// A sort along the last dim: contiguous, rows at most [`MAX_SORT_COLUMNS`].
pub fn check_sort(op: &str, t: &Tensor) -> Result<()> {
    check_contiguous(op, t)?;
    let cols = t.dims().last().copied().unwrap_or(0);
    if checking(t) && cols > MAX_SORT_COLUMNS {
        candle_core::bail!(
            "{op}: rows of {cols} columns ({}) exceed the {MAX_SORT_COLUMNS} that CUDA \
             arg_sort can hold in shared memory",
            describe(t)
        )
    }
    Ok(())
}

/// Index tensor of `index_select` / `gather`: u8, u32 or i64 on CUDA; `gather`
/// also wants it contiguous.
pub fn check_indices(op: &str, ids: &Tensor, needs_contiguous: bool) -> Result<()> {
    if !checking(ids) {
        return Ok(());
    }
    if !matches!(ids.dtype(), DType::U8 | DType::U32 | DType::I64) {
        candle_core::bail!(
            "{op}: index tensor has dtype {:?}; CUDA takes u8, u32 or i64",
            ids.dtype()
        )
    }
    if needs_contiguous {
        check_contiguous(op, ids)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::kernels::run_with;
    use candle_core::Device;

    fn portable<T>(f: impl FnOnce() -> T) -> T {
        run_with(KernelPath::Portable, f)
    }

    #[test]
    fn matmul_takes_plain_and_transposed_refuses_strided() -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::zeros((3, 4, 5), DType::F32, &dev)?;
        let wide = Tensor::zeros((3, 4, 10), DType::F32, &dev)?;
        portable(|| -> Result<()> {
            check_matmul("test", &a, &a.transpose(1, 2)?)?;
            // a column slice keeps row stride 10 for 5 columns: refused
            let strided = wide.narrow(2, 0, 5)?;
            let err = check_matmul("attn.scores", &strided, &a.transpose(1, 2)?)
                .expect_err("strided operand accepted");
            let text = err.to_string();
            assert!(
                text.contains("attn.scores") && text.contains("[3, 4, 5]"),
                "{text}"
            );
            // three batch dims: refused; a narrowed batch dim is fine
            let deep = Tensor::zeros((2, 2, 2, 4, 5), DType::F32, &dev)?;
            assert!(check_matmul_operand("test", "left", &deep).is_err());
            check_matmul_operand("test", "left", &a.narrow(0, 1, 2)?)?;
            // a batch dim that is a transposed view of two: refused
            let mixed = Tensor::zeros((2, 3, 4, 5), DType::F32, &dev)?.transpose(0, 1)?;
            assert!(check_matmul_operand("test", "left", &mixed).is_err());
            Ok(())
        })?;
        // the fast path on the CPU is not checked
        check_matmul("test", &wide.narrow(2, 0, 5)?, &a.transpose(1, 2)?)
    }

    #[test]
    fn contiguity_sort_width_and_index_dtype() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((4, 6), DType::F32, &dev)?;
        portable(|| -> Result<()> {
            check_contiguous("softmax", &x)?;
            let err = check_contiguous("softmax", &x.t()?).expect_err("strided softmax input");
            assert!(err.to_string().contains("softmax"), "{err}");
            check_sort(
                "sort",
                &Tensor::zeros((2, MAX_SORT_COLUMNS), DType::F32, &dev)?,
            )?;
            let err = check_sort(
                "block_mask.sort",
                &Tensor::zeros((2, MAX_SORT_COLUMNS + 1), DType::F32, &dev)?,
            )
            .expect_err("wide sort row");
            assert!(err.to_string().contains("8193"), "{err}");
            check_indices("gather", &Tensor::zeros(3, DType::U32, &dev)?, true)?;
            check_indices("index_select", &Tensor::zeros(3, DType::I64, &dev)?, false)?;
            assert!(check_indices("gather", &Tensor::zeros(3, DType::F32, &dev)?, false).is_err());
            let ids = Tensor::zeros((3, 2), DType::U32, &dev)?.t()?;
            assert!(check_indices("gather", &ids, true).is_err());
            check_indices("index_select", &ids, false)
        })
    }
}
