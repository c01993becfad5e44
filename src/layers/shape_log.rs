//! Shapes of the heavy products (matrix products and convolutions), recorded
//! while a log is open on the thread, so that a benchmark can replay them alone
//! and compare rates (`devtools::replay`). Recording costs nothing while no log
//! is open.

use std::cell::RefCell;

use candle_core::{DType, Result, Tensor};

use super::device_rules;

/// Shape of one (batched) matrix product: `batch x [m, k] @ [k, n]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MatmulShape {
    pub batch: usize,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub dtype: DType,
}

impl MatmulShape {
    /// One f32 product `[m, k] @ [k, n]`.
    pub fn f32(m: usize, k: usize, n: usize) -> Self {
        Self {
            batch: 1,
            m,
            k,
            n,
            dtype: DType::F32,
        }
    }
    pub fn flops(&self) -> f64 {
        2.0 * (self.batch * self.m * self.k * self.n) as f64
    }
}

/// Shape of one 2-D convolution: `[n, c_in, h, w]` input, `c_out x c_in x k x k`
/// kernel, stride 1, output `h x w` (same padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvShape {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub k: usize,
    pub dtype: DType,
}

impl ConvShape {
    pub fn flops(&self) -> f64 {
        2.0 * (self.n * self.h * self.w * self.c_out * self.c_in * self.k * self.k) as f64
    }
    /// The matrix product with the same arithmetic:
    /// `[c_out, c_in * k * k] @ [c_in * k * k, n * h * w]`.
    pub fn as_matmul(&self) -> MatmulShape {
        MatmulShape {
            batch: 1,
            m: self.c_out,
            k: self.c_in * self.k * self.k,
            n: self.n * self.h * self.w,
            dtype: self.dtype,
        }
    }
}

thread_local! {
    static MATMUL_LOG: RefCell<Option<Vec<MatmulShape>>> = const { RefCell::new(None) };
    static CONV_LOG: RefCell<Option<Vec<ConvShape>>> = const { RefCell::new(None) };
}

/// Starts recording the shapes of the convolutions this thread runs.
pub fn start_conv_log() {
    CONV_LOG.with(|l| *l.borrow_mut() = Some(Vec::new()));
}

/// Stops recording and returns what was recorded.
pub fn take_conv_log() -> Vec<ConvShape> {
    CONV_LOG.with(|l| l.borrow_mut().take()).unwrap_or_default()
}

/// Records a convolution when a log is open on this thread.
pub(crate) fn log_conv(shape: ConvShape) {
    CONV_LOG.with(|l| {
        if let Some(log) = l.borrow_mut().as_mut() {
            log.push(shape);
        }
    });
}

/// Starts recording the shapes of the matmuls this thread runs through [`matmul`].
pub fn start_matmul_log() {
    MATMUL_LOG.with(|l| *l.borrow_mut() = Some(Vec::new()));
}

/// Stops recording and returns what was recorded.
pub fn take_matmul_log() -> Vec<MatmulShape> {
    MATMUL_LOG
        .with(|l| l.borrow_mut().take())
        .unwrap_or_default()
}

/// Records a product computed outside [`matmul`] (e.g. by a fused kernel) when
/// a log is open on this thread.
pub(crate) fn log_matmul(shape: MatmulShape) {
    MATMUL_LOG.with(|l| {
        if let Some(log) = l.borrow_mut().as_mut() {
            log.push(shape);
        }
    });
}

/// `a.matmul(b)`, logged when a log is open on this thread.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    matmul_named("matmul", a, b)
}

/// [`matmul`] whose operands, on the portable path, are checked against CUDA's
/// rules ([`device_rules::check_matmul`]); `op` names the product in the error.
pub fn matmul_named(op: &str, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    device_rules::check_matmul(op, a, b)?;
    let dims = a.dims();
    if dims.len() >= 2 && b.rank() >= 2 {
        let (m, k) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        log_matmul(MatmulShape {
            batch: a.elem_count() / (m * k).max(1),
            m,
            k,
            n: b.dims()[b.rank() - 1],
            dtype: a.dtype(),
        });
    }
    a.matmul(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn logs_shapes_only_while_open() -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::zeros((3, 4, 5), DType::F32, &dev)?;
        let b = Tensor::zeros((3, 5, 6), DType::F32, &dev)?;
        matmul(&a, &b)?;
        assert!(take_matmul_log().is_empty());
        start_matmul_log();
        matmul(&a, &b)?;
        let log = take_matmul_log();
        assert_eq!(
            log,
            vec![MatmulShape {
                batch: 3,
                m: 4,
                k: 5,
                n: 6,
                dtype: DType::F32
            }]
        );
        assert_eq!(log[0].flops(), 720.0);
        Ok(())
    }
}
